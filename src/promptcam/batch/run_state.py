"""What makes a results folder one run: its identity (``run.json``) and an exclusive lock.

``--resume`` continues a run only when the model file, the options that change results and the
input roots are the ones it started with; otherwise the records of two runs would mix silently.
The lock makes a second ``promptcam-run`` on the same ``--out`` refuse instead of interleaving.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from promptcam.batch.inputs import canonical_path
from promptcam.core.atomic import atomic_write_text, file_sha256
from promptcam.core.errors import PromptCamError
from promptcam.core.manifest import Manifest

RUN_NAME, LOCK_NAME = "run.json", ".promptcam-run.lock"


def run_identity(manifest: Manifest, model_dir: Path, *, inputs: Sequence[Path], top_k: int,
                 explain_class: str | None, traits: int, heatmaps: Path | None,
                 follow_links: bool = False) -> dict[str, Any]:
    """Everything that changes a run's records: the model file's sha256, the options, the input roots
    and whether links out of them are followed (``None`` when not: a run.json written before that option
    existed still resumes)."""
    return {
        "model_sha256": file_sha256(manifest.file(model_dir, "model")),
        "checkpoint_sha256": manifest.source.get("sha256"),
        "precision": manifest.precision,
        "top_k": top_k,
        "explain_class": explain_class,
        "traits": traits,
        "inputs": [canonical_path(p) for p in inputs],
        "heatmaps": canonical_path(heatmaps) if heatmaps is not None else None,
        "follow_links": True if follow_links else None,
    }


def check_identity(out_dir: Path, identity: dict[str, Any], *, resume: bool) -> None:
    """Write ``run.json``, or on ``--resume`` check that the run it records is this one.

    Raises:
        PromptCamError: resuming a run made with another model, other options or other inputs.
    """
    path = out_dir / RUN_NAME
    if resume and path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PromptCamError(f"{path}: unreadable run identity ({exc}); pass --overwrite to start over") from exc
        changed = [f"{key} was {previous.get(key)!r}, now {value!r}" for key, value in identity.items()
                   if previous.get(key) != value]
        if changed:
            raise PromptCamError(f"{out_dir} holds another run ({'; '.join(changed)}): pass --overwrite to start "
                                 "over, or --out another folder")
        return
    atomic_write_text(path, json.dumps(identity, indent=1) + "\n")


@contextlib.contextmanager
def out_dir_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` for the run (released by the kernel if the process dies).

    Raises:
        PromptCamError: another run holds it.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks, run unlocked
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise PromptCamError(f"{out_dir}: another promptcam-run is writing here ({lock} is locked)") from exc
        yield
    finally:
        os.close(fd)
