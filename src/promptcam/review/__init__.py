"""``promptcam-review``: page through results with their heatmaps in a local web page, and correct labels.

Torch-free (numpy, OpenCV, SQLite, Starlette + uvicorn + Jinja2 from the ``review`` extra). It reads
results through ``promptcam.runtime`` and never writes them: reviews live in a database of their own.
"""
