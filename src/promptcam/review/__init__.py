"""``promptcam-review``: page through results with their heatmaps in a local web page, and correct labels.

Torch-free (numpy, OpenCV, SQLite, Starlette + uvicorn + Jinja2 from the ``review`` extra). It reads
results through ``promptcam.results`` and the runtime's record code and never writes them: reviews
live in a database of their own. Off loopback the page asks for a token (``access``).
"""
