"""After classification: commit a batch's rows in one transaction, then the JSONL log, then move files away.

The order makes a SIGKILL at any moment lose nothing and classify nothing twice: the row is the
done-mark; a restart replays unfinished moves (``archive.py``: durable copy or rename, verify size +
sha256, unlink) and JSONL lines. Where each file goes is decided before the commit and never leaves
the archive roots. The sidecar of a moved photo goes beside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from promptcam.core.atomic import fsync_dir
from promptcam.results.store import PendingMove, ResultStore
from promptcam.runtime.records import db_text, fit_name, utc_now

from .archive import Archiver, contained, fault_point, free_name
from .intake import Taken
from .sidecar import find_sidecar, move_beside

ARCHIVE_NAME_RESERVE = 8  # bytes kept free in an archive name for free_name's "_N"


class Committer:
    """Commits batches of one inbox and moves their files (``--move-processed`` / ``--failed``)."""

    def __init__(self, inbox: Path, source: str, store: ResultStore, *, archive_root: Path | None,
                 failed_root: Path | None, jsonl: Path | None, move_sidecars: bool,
                 log: Callable[[str], None]) -> None:
        self.inbox, self.source, self.store, self.log = inbox, source, store, log
        self.archive_root, self.failed_root, self.jsonl = archive_root, failed_root, jsonl
        self.move_sidecars = move_sidecars
        self.archiver = Archiver(inbox, [r for r in (archive_root, failed_root) if r is not None], store, log)
        self.last_error: str | None = None

    def resume(self) -> None:
        """Before the first scan: finish the moves and the JSONL lines a kill left undone (moves that
        failed before are retried once per start), and start a new JSONL log here."""
        for move in self.store.pending_moves(self.source):
            self.finish_move(move)
        self.sync_jsonl()

    def commit(self, taken: Sequence[Taken]) -> None:
        """The rows and duplicates of one batch: destinations decided, one transaction, the log, the moves."""
        claimed: set[str] = set()
        with_rows = [t for t in taken if t.row is not None]
        for item in with_rows:
            if not item.unreadable:
                item.row.stored_path = self.destination(item.rel, item.row.failure is None, item.row.taken_at,
                                                        claimed)
        # one transaction: these images are now done (and which file each was read from)
        self.store.add([t.row for t in with_rows], log=self.log, file_ids=[t.file_id for t in with_rows])
        fault_point("commit")
        self.sync_jsonl()
        duplicates = [self.duplicate_entry(t, claimed) for t in taken if t.duplicate is not None]
        if duplicates:
            self.store.add_duplicates(duplicates)
            self.log(f"{len(duplicates)} identical re-upload(s) recorded as duplicates, not classified again")
        # files read again that are their own entry (a new inode or ctime): remembered, nothing else
        self.store.set_file_ids((*t.seen, t.file_id) for t in taken if t.seen is not None and t.file_id is not None)
        for move in self.store.pending_moves(self.source, with_errors=False):
            self.finish_move(move)

    def duplicate_entry(self, item: Taken, claimed: set[str]) -> dict[str, Any]:
        rel, size, mtime_ns = item.version
        dup = item.duplicate
        inode, ctime_ns = item.file_id or (None, None)
        return {"result_id": dup.result_id, "source": self.source, "file": rel, "sha256": dup.sha256,
                "size": size, "mtime_ns": mtime_ns, "inode": inode, "ctime_ns": ctime_ns,
                "stored_path": self.destination(rel, dup.ok, dup.taken_at, claimed)}

    def destination(self, rel: str, ok: bool, taken_at: str | None, claimed: set[str]) -> str | None:
        """Where a file goes once its row is committed (decided before the commit, never outside the roots)."""
        if ok and self.archive_root is not None:
            root, parts = self.archive_root, [(taken_at or utc_now())[:10], *rel.split("/")]
        elif not ok and self.failed_root is not None:
            root, parts = self.failed_root, rel.split("/")
        else:
            return None
        target = root.joinpath(*(fit_name(p, reserve=ARCHIVE_NAME_RESERVE, readable=True) for p in parts))
        if not contained(target, root):
            self.log(f"{db_text(rel)}: archive path {target} leaves {root}; the file stays in the inbox")
            return None
        target = free_name(target, lambda p: str(p) in claimed or self.store.is_claimed(str(p)))
        claimed.add(str(target))
        return str(target)

    def finish_move(self, move: PendingMove) -> None:
        """Move a committed file away, then its detection sidecar beside it (``--detections``)."""
        self.archiver.finish(move)
        if not self.move_sidecars:
            return
        stored, moved, error = self.store.move_outcome(move)
        if not moved or error is not None or stored is None:
            return  # not moved: the sidecar stays with its image
        image = self.inbox / move.file
        sidecar = find_sidecar(image)
        if sidecar is None or not os.path.isfile(sidecar) or os.path.islink(sidecar):
            return
        try:
            move_beside(sidecar, image.name, Path(stored))
        except OSError as exc:
            self.last_error = f"{db_text(str(sidecar))}: detection sidecar not moved ({exc}); it stays in the inbox"
            self.log(self.last_error)

    def sync_jsonl(self) -> None:
        """Append to ``--jsonl`` every row of this inbox it does not have yet (the log's last id says which)."""
        path = self.jsonl
        if path is None:
            return
        last = _last_logged_id(path)
        if last is None:  # a new log: it starts with the rows of this session
            key = f"jsonl_from:{path.resolve()}"
            last = self.store.meta_int(key)
            if last is None:
                last = self.store.max_id(self.source)
                self.store.set_meta(key, str(last))
        lines = [_jsonl_line(row) for row in self.store.rows_after(self.source, last)]
        if not lines:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(path.parent)


def _jsonl_line(row: dict[str, Any]) -> str:
    row.pop("inode", None)  # which file on this disk the row was read from: the station's own bookkeeping
    row.pop("ctime_ns", None)
    raw = row.pop("file_raw", None)
    if raw is not None:
        row["file_raw_hex"] = bytes(raw).hex()
    return json.dumps(row, sort_keys=True) + "\n"


def _last_logged_id(path: Path) -> int | None:
    """The id of the last complete line of a JSONL log; a torn last line (a kill mid-write) is cut off."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    window = 1 << 16
    while True:
        start = max(0, size - window)
        with open(path, "rb") as fh:
            fh.seek(start)
            tail = fh.read()
        end = tail.rfind(b"\n")
        if end < 0 and start > 0:
            window *= 4
            continue
        if end + 1 < len(tail):  # torn tail: drop it so the next line starts on its own
            with open(path, "r+b") as fh:
                fh.truncate(start + end + 1)
        for line in reversed(tail[:end + 1].splitlines()):
            try:
                value = json.loads(line).get("id")
            except (ValueError, AttributeError):
                continue
            if isinstance(value, int):
                return value
        if start == 0:
            return None
        window *= 4
