"""``promptcam watch --events SECONDS``: events formed as photos arrive, kept in the station's database.

The rule is the folder run's (``results.events``): per camera, a file within SECONDS of an event's
capture times joins it, else it starts a new one (``CAMERA@START``). Here files arrive over hours, out
of order within a batch, across restarts, so the state is the database: before a batch is committed
each row gets its ``event_id`` from the camera's latest events in the ``events`` table (and the batch's
own new ones); after it, each touched event's row is recomputed from its files' rows (``save_event``:
capture order, ``frame_num``, ``seq_num_frames``, the verdict by ``runtime.verdict``). An event closes
when a file of its camera comes more than SECONDS after its end. A restart replays the refresh of
every open event, so a kill between the commit and the refresh loses nothing, and since ids come from
capture times, a restart mid-event neither splits it nor merges it with the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from promptcam.results.events import Event, camera_of, camera_pattern, capture_time, event_id, record_probabilities
from promptcam.results.store import ResultStore, record_from_row
from promptcam.runtime.records import ImageRecord, round_probability
from promptcam.runtime.verdict import combine_frames

ISO = "%Y-%m-%dT%H:%M:%S"


class StationEvents:
    """Event ids for a station's rows, and the ``events`` table kept up to date."""

    def __init__(self, store: ResultStore, source: str, seconds: float, class_names: Sequence[str], *,
                 camera_from: str | None = None, detector: bool = False) -> None:
        self.store, self.source, self.seconds = store, source, seconds
        self.class_names = list(class_names)
        self.pattern = camera_pattern(camera_from)
        self.detector = detector
        self._known: dict[str, list[list]] = {}  # camera -> [[event_id, start, end]] (recent, from the table)

    def start(self) -> None:
        """Refresh every event still open (or never summarised: a kill after the rows were committed)."""
        self.refresh(self.store.stale_events(self.source))

    def assign(self, rows: Sequence[ImageRecord]) -> None:
        """Give each row with a capture time its ``event_id`` (before the batch is committed)."""
        window = timedelta(seconds=self.seconds)
        timed = [(when, row) for row in rows if (when := capture_time(row)) is not None]
        for when, row in sorted(timed, key=lambda pair: (pair[0], pair[1].file)):
            camera = camera_of(row.file, self.pattern)
            events = self._events_of(camera)
            for event in events:
                if event[1] - window <= when <= event[2] + window:
                    event[1], event[2] = min(event[1], when), max(event[2], when)
                    row.event_id = event[0]
                    break
            else:
                new = event_id(camera, when)
                events.insert(0, [new, when, when])
                row.event_id = new

    def refresh(self, event_ids: Sequence[str]) -> None:
        """Recompute the ``events`` rows of ``event_ids`` from their files' rows (after a commit, or a restart)."""
        for eid in dict.fromkeys(e for e in event_ids if e):
            rows = self.store.rows("source=? AND event_id=?", (self.source, eid))
            members = [(capture_time(record), record.file, row["id"], record)
                       for row in rows for record in (record_from_row(row),)]
            members.sort(key=lambda m: (m[0] or datetime.min, m[1]))  # capture order
            known = [when for when, *_ in members if when is not None]
            records, ids = [m[3] for m in members], [m[2] for m in members]
            camera = camera_of(records[0].file, self.pattern)
            verdict = combine_frames([record_probabilities(r, len(self.class_names)) for r in records],
                                     detector=self.detector)
            event = Event(eid, camera, min(known), max(known), list(range(len(records))), verdict)
            self.store.save_event(self.source, _summary(event, self.class_names), ids)
            self.store.close_events(self.source, camera, (event.end - timedelta(seconds=self.seconds)).strftime(ISO))

    def _events_of(self, camera: str) -> list[list]:
        if camera not in self._known:
            self._known[camera] = [[e, datetime.fromisoformat(s), datetime.fromisoformat(t)]
                                   for e, s, t in self.store.recent_events(self.source, camera)]
        return self._known[camera]


def _summary(event: Event, class_names: Sequence[str]) -> dict:
    verdict = event.verdict
    return {"event_id": event.event_id, "camera": event.camera, "start": event.start.strftime(ISO),
            "end": event.end.strftime(ISO), "verdict": None if verdict.blank else class_names[verdict.top_class],
            "event_confidence": round_probability(verdict.confidence) if not verdict.blank else None,
            "top_k": [{"index": c, "name": class_names[c], "probability": round_probability(verdict.probabilities[c])}
                      for c in verdict.top_k(3)]}
