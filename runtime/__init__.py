"""The field-station runtime: numpy, OpenCV and ONNX Runtime / TensorRT only -- never torch or timm."""

from .manifest import Manifest, read_manifest
from .predictor import ClassScore, Prediction, Predictor

__all__ = ["ClassScore", "Manifest", "Prediction", "Predictor", "read_manifest"]
