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

from .images import iter_image_files

NAME_MAX = 255  # bytes in one file name (ext4, XFS, exFAT, tmpfs)
HEATMAP_SUFFIX, TRAITS_SUFFIX = ".heatmap.jpg", ".traits.jpg"


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


def safe_components(name: str) -> list[str]:
    """Path components of a reported name that stay inside a folder: no root, no ``.``, ``..`` kept
    visible but harmless (``__``), so ``../x.jpg`` and ``x.jpg`` stay distinct."""
    parts = []
    for part in name.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        parts.append("__" if part == ".." else part)
    return parts or ["_"]


def fit_name(stem: str, suffix: str, limit: int = NAME_MAX) -> str:
    """``stem + suffix`` if it fits in ``limit`` bytes, else the stem cut short plus ``~`` and a hash of it."""
    full = stem + suffix
    if len(os.fsencode(full)) <= limit:
        return full
    digest = hashlib.sha256(os.fsencode(stem)).hexdigest()[:12]
    tail = f"~{digest}{suffix}"
    budget = limit - len(os.fsencode(tail))
    cut = stem
    while len(os.fsencode(cut)) > budget:
        cut = cut[:-1]
    return cut + tail


def heatmap_paths(heatmap_dir: Path, file: str) -> tuple[Path, Path]:
    """Heatmap and trait contact-sheet paths of a reported name, always inside ``heatmap_dir``.

    The image's own extension is kept (``cam.jpg.heatmap.jpg``), so ``cam.jpg`` and ``cam.png``
    never share a heatmap, and names near the 255-byte limit are shortened with a hash.
    """
    *folders, base = safe_components(file)
    folder = heatmap_dir.joinpath(*(fit_name(f, "") for f in folders))
    return folder / fit_name(base, HEATMAP_SUFFIX), folder / fit_name(base, TRAITS_SUFFIX)


def assign_heatmap_paths(files: Sequence[InputFile], heatmap_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Heatmap paths for every image of a run, distinct even where the file system folds case
    (exFAT SD cards) or two names sanitise alike: a later one gets a hash of its canonical path."""
    taken: set[str] = set()
    paths: dict[str, tuple[Path, Path]] = {}
    for f in files:
        heat, sheet = heatmap_paths(heatmap_dir, f.name)
        if str(heat).casefold() in taken:
            digest = hashlib.sha256(os.fsencode(f.key)).hexdigest()[:12]
            base = heat.name[: -len(HEATMAP_SUFFIX)]
            heat = heat.with_name(fit_name(f"{base}~{digest}", HEATMAP_SUFFIX))
            sheet = sheet.with_name(fit_name(f"{base}~{digest}", TRAITS_SUFFIX))
        taken.add(str(heat).casefold())
        paths[f.name] = (heat, sheet)
    return paths
