"""The journal of a file run: append-only JSONL of records, what ``--resume`` reads."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from promptcam.core.errors import PromptCamError
from promptcam.core.untrusted import loads_untrusted
from promptcam.runtime.records import ImageRecord


class Journal:
    """Append-only JSONL of records, fsynced at checkpoints.

    Reading tolerates what a kill or a power cut leaves: a torn last line, a garbage or
    zero-filled line anywhere. Bad lines are skipped and counted (their images are redone).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None
        self.bad_lines = 0

    def read(self) -> list[ImageRecord]:
        self.bad_lines = 0
        if not self.path.is_file():
            return []
        records = []
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn write from a killed run: that chunk is redone
                if not raw.strip():
                    continue
                try:
                    data = loads_untrusted(raw.decode("utf-8"), str(self.path))
                    records.append(ImageRecord.from_dict(data))
                except (ValueError, TypeError, AttributeError):
                    self.bad_lines += 1  # garbage or zeros from a power cut (or a foreign line)
        return records

    def open(self, *, truncate: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not truncate and self.path.is_file():
            self._drop_torn_tail()
        self._fh = open(self.path, "w" if truncate else "a", encoding="utf-8")

    def _drop_torn_tail(self) -> None:
        with open(self.path, "r+b") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)
                os.fsync(fh.fileno())

    def append(self, records: Iterable[ImageRecord]) -> None:
        if self._fh is None:
            raise PromptCamError(f"{self.path}: journal is not open")
        # one write per chunk: a kill leaves whole chunks or a torn tail, never a half chunk silently
        self._fh.write("".join(r.to_json() + "\n" for r in records))
        self._fh.flush()

    def checkpoint(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self.checkpoint()
            self._fh.close()
            self._fh = None
