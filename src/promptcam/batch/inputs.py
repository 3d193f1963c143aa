"""The inputs of a file run and where their outputs go: reported names, resume keys, heatmap paths.

Whatever the file system holds (symlink loops, non-UTF-8 or 255-byte names, the same relative
name under two roots, ``..`` in a list file), every image gets one reported name that tells it
apart and one heatmap path inside the heatmap folder that no other image of the run shares.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from promptcam.core.errors import PromptCamError
from promptcam.runtime.records import HeatmapFiles, heatmap_paths
from promptcam.runtime.video import is_media_path

LIST_SUFFIXES = (".txt", ".lst")  # an input file with one of these is a list of image paths


@dataclass(frozen=True)
class InputFile:
    """One image of a run.

    Attributes:
        name: Reported name (``file`` in the results): relative to its folder, prefixed with the
            folder's label when a run has several inputs; a single file or list entry as spelled, or
            by its absolute path when the run also has labelled folders (``collect_inputs``).
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
    roots share it (``site1/DCIM``, ``site2/DCIM``), and ``~N`` for the same folder given twice.

    The labels are prefix-free: no label is another's first components (``a`` and ``a/b``), so a name
    ``LABEL/PATH`` reads as one folder's photo only; where one is, the longer label grows (or, when it is
    already the whole path, the shorter one). The one case left is a folder inside another, whose photos
    are the same files under both.
    """
    parts = [PurePosixPath(canonical_path(r)).parts[1:] or ("root",) for r in roots]
    depth = [1] * len(roots)
    while True:
        labels = [p[-d:] for p, d in zip(parts, depth, strict=True)]
        grow: set[int] = set()
        for i, j in itertools.permutations(range(len(roots)), 2):
            if parts[i] == parts[j]:
                continue
            if labels[i] == labels[j]:
                grow.add(i)
            elif len(labels[i]) < len(labels[j]) and labels[j][:len(labels[i])] == labels[i]:
                grow.add(j if depth[j] < len(parts[j]) else i)  # label i would read as a folder of label j
        grow = {k for k in grow if depth[k] < len(parts[k])}
        if not grow:
            break
        for k in grow:
            depth[k] += 1
    seen: dict[tuple[str, ...], int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        text = "/".join(label)
        unique.append(text if seen[label] == 1 else f"{text}~{seen[label]}")
    return unique


class Inputs(NamedTuple):
    """What a run's inputs hold.

    Attributes:
        files: Every image once, in input order.
        skipped: Files that are neither photos nor clips (by suffix).
        refused_links: Symbolic links found in a folder that lead out of the input folders, not followed
            (``follow_links`` follows them): never read, never named in the results.
        folders: The label each input folder's photos are named under (``LABEL/PATH``) -> its canonical
            path; empty when the run has one input (names are relative to it).
    """

    files: list[InputFile]
    skipped: list[Path]
    refused_links: list[Path]
    folders: dict[str, str]


def collect_inputs(inputs: Sequence[Path], *, follow_links: bool = False) -> Inputs:
    """Every image under ``inputs`` once, in input order, with the name each is reported under.

    Names. One input: paths relative to the folder (a file or a list entry as spelled). Several inputs:
    a folder's photos are ``LABEL/PATH`` (``root_labels``: prefix-free, so every name reads as one folder's
    photo), and files named on the command line or in a list file are named by their absolute path,
    which no label starts with, so no such name can be read as a folder's photo.

    Links. Files and folders named as inputs (and list entries) are read wherever they are: the user
    named them. Inside a folder, a symbolic link is followed only where it stays inside the input
    folders (or reaches a file named as an input); one that leads out is refused (``refused_links``:
    never read, in no result), unless ``follow_links``. A folder link that stays inside is not walked
    a second time: its photos are listed where they are. A folder reached through a link is walked
    once, so link loops end there (never an error or a hang); a file link loop is a failure record.

    Raises:
        PromptCamError: an input that does not exist.
    """
    roots = [Path(source) for source in inputs]
    for root in roots:
        if not root.exists():
            raise PromptCamError(f"{root}: input not found")
    folders = [i for i, r in enumerate(roots) if r.is_dir()]
    keys = list(dict.fromkeys(canonical_path(roots[i]) for i in folders))
    several = len(roots) > 1
    labels = dict(zip(keys, root_labels([Path(k) for k in keys]), strict=True)) if several else {}
    listed = {i: list(_listed(roots[i])) for i, r in enumerate(roots) if i not in folders and _is_list(r)}

    @functools.cache
    def named() -> set[str]:  # the files named as inputs (asked only when a folder holds a link)
        return {canonical_path(p) for i, r in enumerate(roots) if i not in folders for p in listed.get(i, [r])}

    def inside(target: str) -> bool:
        return any(target == k or target.startswith(k.rstrip(os.sep) + os.sep) for k in keys) or target in named()

    skipped: list[Path] = []
    refused: list[Path] = []
    files: list[InputFile] = []
    seen_keys: set[str] = set()
    seen_names: set[str] = set()
    for index, root in enumerate(roots):
        if index in folders:
            label = labels.get(canonical_path(root))
            paths = _walk(root, inside, follow_links, skipped, refused)
        else:
            label = None
            paths = _keep_images(listed.get(index, [root]), skipped)
        for path in paths:
            key = canonical_path(path)
            if key in seen_keys:
                continue  # a symlink to an image already listed, or a root given twice
            seen_keys.add(key)
            if index in folders:
                rel = path.relative_to(root).as_posix()
                name = f"{label}/{rel}" if label is not None else rel
            else:
                name = path.absolute().as_posix() if labels else path.as_posix()
            if name in seen_names:
                name = key  # not expected (see above); the canonical path still tells them apart
            seen_names.add(name)
            try:
                st = os.stat(path)
                size, mtime_ns = st.st_size, st.st_mtime_ns
            except OSError:
                size = mtime_ns = None  # a loop or a dangling link: its read fails into a failure record
            files.append(InputFile(name, path, key, size, mtime_ns))
    return Inputs(files, skipped, refused, {label: key for key, label in labels.items()})


def _is_list(path: Path) -> bool:
    return path.suffix.lower() in LIST_SUFFIXES and path.is_file()


def _listed(listing: Path) -> Iterator[Path]:
    """A list file's entries (one path per line, relative to the list's folder; ``#`` comments)."""
    base = listing.parent
    # surrogateescape: a listed non-UTF-8 file name stays the exact bytes on disk
    for line in listing.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        if line.strip() and not line.startswith("#"):
            entry = Path(line.strip())
            yield entry if entry.is_absolute() else base / entry


def _keep_images(paths: Iterable[Path], skipped: list[Path]) -> Iterator[Path]:
    for path in paths:
        if is_media_path(path):
            yield path
        else:
            skipped.append(path)


def _walk(root: Path, inside: Callable[[str], bool], follow_links: bool, skipped: list[Path],
          refused: list[Path]) -> Iterator[Path]:
    """The images under a folder in ``os.walk`` order (a folder's files sorted, then its folders, depth
    first), links followed as ``collect_inputs`` says. An explicit stack: no recursion limit on deep trees.

    Past a link leading out (``follow_links``), every folder is walked once, and one that is inside the
    inputs again is left to them: its photos keep the names their own input gives them.
    """
    walked = {canonical_path(root)}
    stack: list[tuple[Path, bool]] = [(root, False)]  # (folder, reached through a link leading out)
    while stack:
        folder, out = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # unreadable or vanished: skipped, as os.walk does
        dirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows a link, as os.walk
            except OSError:
                is_dir = False
            if is_dir:
                dirs.append(entry)
                continue
            path = folder / entry.name
            if not is_media_path(path):
                skipped.append(path)
            elif follow_links or not entry.is_symlink() or inside(canonical_path(path)):
                yield path
            else:
                refused.append(path)
        below = []
        for entry in dirs:
            path = folder / entry.name
            if entry.is_symlink() or out:
                target = canonical_path(path)
                if inside(target) or target in walked:
                    continue  # its photos are listed where they are; a loop ends here
                if not follow_links:
                    refused.append(path)
                    continue
                walked.add(target)
            below.append((path, out or entry.is_symlink()))
        stack.extend(reversed(below))


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
