"""promptcam: deployment and edge inference for Prompt-CAM.

Layers, lowest first: ``promptcam.core`` (torch-free config, errors, manifest, IO spec) <-
``promptcam.runtime`` (torch-free: numpy, OpenCV, ONNX Runtime / TensorRT) <- ``promptcam.models``,
``promptcam.train``, ``promptcam.export``, ``promptcam.benchmarks`` (torch). A lower layer never
imports a higher one (``tests/test_layers.py``).
"""
