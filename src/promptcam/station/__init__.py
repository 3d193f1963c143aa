"""The field station: the inbox watcher (``promptcam watch``), detector sidecars, camera streams and the
archive of processed photos. Results go to the SQLite store of ``promptcam.results.store``.
"""
