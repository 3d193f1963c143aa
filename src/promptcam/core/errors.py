"""The project's error hierarchy (torch-free: the runtime raises these too).

Command-line entry points turn a ``PromptCamError`` into one clear line and a non-zero exit code.
"""


class PromptCamError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(PromptCamError):
    """A model config is missing fields or is inconsistent."""


class CheckpointError(PromptCamError):
    """A checkpoint file is unreadable, of an unknown format, or does not match the model."""


class ExportError(PromptCamError):
    """An export pass failed."""


class ValidationError(ExportError):
    """An exported model disagrees with the eager PyTorch model beyond tolerance."""


class ManifestError(PromptCamError):
    """A model directory's manifest is missing or does not describe the model next to it."""


class BackendUnavailableError(PromptCamError):
    """An inference backend (TensorRT, ORT CUDA, ...) cannot run on this machine."""


class ImageError(PromptCamError):
    """One image could not be read or decoded; becomes a per-image failure record."""


class ServerUnavailableError(BackendUnavailableError):
    """An inference server (``--server URL``) could not be reached within its retry time; nothing was lost:
    the images of the batch are classified again once it answers."""
