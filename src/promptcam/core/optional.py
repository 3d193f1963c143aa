"""Optional dependencies: import on first use, or one clear error naming the extra that brings it."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import PromptCamError


def optional_import(module: str, *, extra: str, purpose: str,
                    error: type[PromptCamError] = PromptCamError) -> ModuleType:
    """Import ``module`` or raise ``error`` saying what needs it and how to install it.

    Args:
        module: Dotted module name (``pyarrow.parquet``, ``watchdog.observers``).
        extra: The promptcam extra that installs it (``ray``, ``field`` ...).
        purpose: What the caller wanted it for, for the message.
        error: The error class to raise.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise error(f"{purpose} needs {module.split('.')[0]} ({exc}); "
                    f"install it with: pip install 'promptcam[{extra}]'") from exc
