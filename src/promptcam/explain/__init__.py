"""Faithfulness of the maps: is a heatmap the evidence the model used?

- ``promptcam.explain.metrics`` (torch-free: numpy + OpenCV): the RISE-style protocol (insertion /
  deletion AUC), pointing game, energy in a mask, the results table, and the scorer and Prompt-CAM
  maps of an exported model (``promptcam.runtime.Predictor``).
- ``promptcam.explain.baselines`` (PyTorch): Grad-CAM, Layer-CAM, Eigen-CAM and attention rollout
  on the checkpoint, and ``faithfulness_table``, Prompt-CAM against them (``promptcam-eval
  --faithfulness``, the demo's table).

Nothing is imported here, so ``import promptcam.explain.metrics`` needs no torch.
"""
