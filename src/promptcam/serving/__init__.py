"""``promptcam serve``: an exported model behind Triton Inference Server (HTTP, gRPC, dynamic batching).

An application of the runtime, beside ``batch``, ``station`` and ``review``: the served model is loaded by
the runtime's ``Predictor`` (its manifest checks included) and runs on its backend. Clients are any
``tritonclient`` program, or ``promptcam run --server URL`` / ``promptcam watch --server URL``
(``runtime.backends.served``). Needs the ``serve`` extra (nvidia-pytriton's Triton build).
"""
