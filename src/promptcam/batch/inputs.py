"""The inputs of a file run and where their outputs go: reported names, resume keys, heatmap paths.

Whatever the file system holds (symlink loops, non-UTF-8 or 255-byte names, the same relative
name under two roots, ``..`` in a list file), every image gets one reported name that tells it
apart and one heatmap path inside the heatmap folder that no other image of the run shares.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from promptcam.core.errors import PromptCamError
from promptcam.runtime.images import iter_image_files
from promptcam.runtime.records import HeatmapFiles, heatmap_paths


@dataclass(frozen=True)
class InputFile:
    """One image of a run.

    Attributes:
        name: Reported name (``file`` in the results): relative to its folder, prefixed with the
            folder's name when a run has several inputs; a single file or list entry as spelled.
        path: The path to read.
        key: Canonical absolute path (symlinks resolved): the identity ``--resume`` keys on.
        size / mtime_ns: At collection time; a file replaced under the same name is new work.
    """

    name: str
    path: Path
    key: str
    size: int | None
    mtime_ns: int | None


def canonical_path(path: str | Path) -> str:
    """Absolute path with symlinks resolved; a symlink loop resolves as far as it goes (no error)."""
    try:
        return os.path.realpath(path)
    except (OSError, RuntimeError, ValueError):
        return os.path.abspath(path)


def root_labels(roots: Sequence[Path]) -> list[str]:
    """Names that tell folder roots apart: the last path component, with parents added where two
    roots share it (``site1/DCIM``, ``site2/DCIM``), and ``~N`` for the same folder given twice."""
    parts = [PurePosixPath(canonical_path(r)).parts[1:] or ("root",) for r in roots]
    depth = [1] * len(roots)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        grown = False
        for i, label in enumerate(labels):
            clash = any(other == label and parts[j] != parts[i] for j, other in enumerate(labels))
            if clash and depth[i] < len(parts[i]):
                depth[i] += 1
                grown = True
        if not grown:
            break
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label}~{seen[label]}")
    return unique


def collect_inputs(inputs: Sequence[Path]) -> tuple[list[InputFile], list[Path]]:
    """Every image under ``inputs`` once, in input order, and the non-image files skipped.

    Raises:
        PromptCamError: an input that does not exist.
    """
    skipped: list[Path] = []
    files: list[InputFile] = []
    seen_keys: set[str] = set()
    seen_names: set[str] = set()
    roots = [Path(source) for source in inputs]
    for root in roots:
        if not root.exists():
            raise PromptCamError(f"{root}: input not found")
    folders = [i for i, r in enumerate(roots) if r.is_dir()]
    labels = dict(zip(folders, root_labels([roots[i] for i in folders]), strict=True)) if len(roots) > 1 else {}
    for index, root in enumerate(roots):
        is_folder = index in folders
        for path in iter_image_files([root], skipped):
            key = canonical_path(path)
            if key in seen_keys:
                continue  # a symlink to an image already listed, or a root given twice
            seen_keys.add(key)
            rel = path.relative_to(root).as_posix() if is_folder else path.as_posix()
            name = f"{labels[index]}/{rel}" if index in labels else rel
            if name in seen_names:
                name = key  # two spellings that collide: the canonical path still tells them apart
            seen_names.add(name)
            try:
                st = os.stat(path)
                size, mtime_ns = st.st_size, st.st_mtime_ns
            except OSError:
                size = mtime_ns = None  # a loop or a dangling link: its read fails into a failure record
            files.append(InputFile(name, path, key, size, mtime_ns))
    return files, skipped


def assign_heatmap_paths(files: Sequence[InputFile], heatmap_dir: Path) -> dict[str, HeatmapFiles]:
    """Heatmap files for every image of a run, distinct even where the file system folds case
    (exFAT SD cards) or two names sanitise alike: a later one gets a hash of its canonical path."""
    taken: set[str] = set()
    paths: dict[str, HeatmapFiles] = {}
    for f in files:
        files_of = heatmap_paths(heatmap_dir, f.name)
        if str(files_of.heatmap).casefold() in taken:
            files_of = heatmap_paths(heatmap_dir, f.name, tag=hashlib.sha256(os.fsencode(f.key)).hexdigest()[:12])
        taken.add(str(files_of.heatmap).casefold())
        paths[f.name] = files_of
    return paths
