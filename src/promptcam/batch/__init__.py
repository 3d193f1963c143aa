"""The folder run (``promptcam run``): inputs, the resume journal, detections and crops, Ray.

``run_files(predictor, RunOptions(...))`` is the Python entry point.
"""
