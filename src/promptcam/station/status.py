"""The station's health file (``--status-file``): what it did this session, its queue and its last error."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from promptcam.core.atomic import atomic_write_text
from promptcam.runtime.records import db_text, utc_now


@dataclass
class StationCounts:
    """What this session did, for the status file and the final log line."""

    processed: int = 0
    failed: int = 0
    duplicates: int = 0
    not_ready: int = 0


@dataclass
class StationStatus:
    """The counters and gauges of one station, and the writer of its status file."""

    path: Path | None
    every: float
    counts: StationCounts = field(default_factory=StationCounts)
    queue_depth: int = 0
    last_error: str | None = None
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=50))  # (seconds, rows) a batch
    _last_write: float = 0.0

    def batch_done(self, seconds: float, rows: int) -> None:
        self.recent.append((seconds, rows))

    def write(self, state: str, facts: dict[str, Any], log: Any, *, force: bool = False) -> None:
        """Write the file (at most every ``every`` seconds unless ``force``); a full disk is logged, not raised."""
        now = time.monotonic()
        if self.path is None or (not force and now - self._last_write < self.every):
            return
        self._last_write = now
        seconds = sum(t for t, _ in self.recent)
        status = {"state": state, "pid": os.getpid(), **facts, "queue_depth": self.queue_depth,
                  **asdict(self.counts),
                  "images_per_second": sum(n for _, n in self.recent) / seconds if seconds else 0.0,
                  "last_error": db_text(self.last_error), "updated_at": utc_now()}
        try:
            atomic_write_text(self.path, json.dumps(status, indent=1), durable=False)
        except OSError as exc:  # a full or read-only disk must not stop the classification
            log(f"{self.path}: status not written ({exc})")
