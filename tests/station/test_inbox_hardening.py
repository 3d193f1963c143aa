"""promptcam-watch against hostile inboxes: odd files, odd names, hostile EXIF, bad targets, power cuts.

Every test runs the real ``promptcam-watch`` process on real files and a real SQLite database.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from hostile_corpus import make_hostile_corpus
from watch_helpers import db_rows, jpeg, sha, watch

from helpers import run_cli
from promptcam.results.store import ResultStore, name_from_db
from promptcam.runtime.records import ImageRecord, fit_name
from promptcam.runtime.video import is_media_path
from promptcam.station.archive import FAULT_EXIT, valid_taken_at
from promptcam.station.readiness import TEMP_SUFFIXES


def snapshot(root: Path, *, skip: tuple[Path, ...] = ()) -> set[str]:
    """Every path under ``root`` (links not followed), outside the folders in ``skip``."""
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) not in skip]
        found.update(os.path.join(folder, n) for n in dirs + files)
    return found


def inbox_entries(inbox: Path) -> tuple[set[str], set[str]]:
    """(names the watcher must take, names it must skip and count) of the entries in ``inbox``."""
    take, skip = set(), set()
    for folder, dirs, files in os.walk(inbox):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            rel = Path(folder, name).relative_to(inbox).as_posix()
            regular = Path(folder, name).is_file() and not Path(folder, name).is_symlink()
            wanted = regular and is_media_path(name) and not name.startswith(".") and not name.endswith(TEMP_SUFFIXES)
            (take if wanted else skip).add(rel)
    return take, skip


def test_hostile_corpus_inbox(tiny_export, tmp_path) -> None:
    # deep enough that an EXIF date of "../../../." (three folders above the archive) stays inside tmp_path
    station = tmp_path / "a" / "b" / "c" / "station"
    inbox, archive, failed, db = station / "inbox", station / "archive", station / "failed", station / "db.sqlite"
    heat = inbox / "_heatmaps"  # an output inside the inbox: must not be scanned
    corpus = make_hostile_corpus(inbox)
    take, skip = inbox_entries(inbox)
    assert len(take) + len(skip) >= 200 and corpus["count"] >= 200
    by_rel = {e["path"].relative_to(inbox).as_posix(): e for e in corpus["entries"]}
    before = snapshot(tmp_path, skip=(inbox, archive, failed))

    args = ("--move-processed", archive, "--failed", failed, "--heatmaps", heat, "--status-file",
            station / "status.json", "--jsonl", station / "log.jsonl", "--incomplete-wait", "0", "--batch-size", "16")
    result = watch(tiny_export, inbox, db, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    rows = db_rows(db)
    names = [name_from_db(r["file"], r["file_raw"]) for r in rows]
    assert len(names) == len(set(names)), "an input got two rows"
    assert set(names) == take, (sorted(set(names) - take)[:5], sorted(take - set(names))[:5])
    status = json.loads((station / "status.json").read_text())
    assert status["state"] == "stopped" and status["processed"] + status["failed"] == len(take)
    # what was not taken is counted, and it is exactly what is still there: symlinks, FIFOs, hidden, temp
    assert status["skipped"] == len(skip)

    for row, name in zip(rows, names, strict=True):
        entry = by_rel[name]
        if entry["expect"] == "ok":
            assert row["status"] == "ok", (name, row["failure"])
        if entry["expect"] == "failure":
            assert row["status"] == "failed", name
        assert row["moved"] == 1 and row["move_error"] is None, (name, row["move_error"])
        stored = Path(row["stored_path"])
        assert stored.is_relative_to(archive if row["status"] == "ok" else failed), stored
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row["sha256"]
        if row["status"] == "ok":
            day = stored.relative_to(archive).parts[0]
            assert re.fullmatch(r"(199\d|20\d\d)-\d\d-\d\d", day), day
            assert Path(row["heatmap"]).is_relative_to(heat) and Path(row["heatmap"]).is_file(), name
    hostile = {p.relative_to(inbox).as_posix() for p in corpus["exif_dates"]}
    assert {n for n, r in zip(names, rows, strict=True) if r["status"] == "ok"} >= hostile

    # nothing written outside the roots; nothing of the inbox left but what it skipped (and its heatmaps)
    after = snapshot(tmp_path, skip=(inbox, archive, failed))
    assert after - before == {str(station / n) for n in ("db.sqlite", "status.json", "log.jsonl",
                                                         "db.sqlite-wal", "db.sqlite-shm")} & after
    assert not Path("/abs/dir 0").exists()
    left, _ = inbox_entries(inbox)
    assert {n for n in left if not n.startswith("_heatmaps/")} == set()
    assert len((station / "log.jsonl").read_text().splitlines()) == len(rows)

    for fmt, out in (("csv", station / "r.csv"), ("megadetector", station / "r.json")):
        exported = run_cli("promptcam-export-results", db, "--format", fmt, "-o", out)
        assert exported.returncode == 0 and f"wrote {len(rows)} images" in exported.stdout, exported.stderr[-2000:]
    assert len(json.loads((station / "r.json").read_text())["images"]) == len(rows)

    # a restart: nothing new, nothing twice
    again = watch(tiny_export, inbox, db, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(db_rows(db)) == len(rows)
    assert len((station / "log.jsonl").read_text().splitlines()) == len(rows)


def test_export_of_a_damaged_database_is_one_clear_line(tmp_path) -> None:
    (tmp_path / "bad.sqlite").write_bytes(b"not a database, a power cut's leftovers " * 200)
    result = run_cli("promptcam-export-results", tmp_path / "bad.sqlite", "-o", tmp_path / "x.json")
    assert result.returncode == 1 and "cannot read the results database" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.json").exists()


def test_output_folder_that_is_the_inbox_is_refused(tiny_export, tmp_path) -> None:
    inbox = tmp_path / "inbox"
    jpeg(inbox / "a.jpg", 0)
    result = watch(tiny_export, inbox, tmp_path / "db.sqlite", "--move-processed", inbox)
    assert result.returncode == 1 and "is the inbox itself" in result.stderr
    assert "Traceback" not in result.stderr


def test_output_folders_inside_the_inbox_are_not_scanned(tiny_export, tmp_path) -> None:
    inbox, db = tmp_path / "inbox", tmp_path / "db.sqlite"
    data = {f"cam/{i}.jpg": jpeg(inbox / "cam" / f"{i}.jpg", i) for i in range(3)}
    (inbox / "broken.jpg").write_bytes(b"\xff\xd8 not a picture \xff\xd9")
    args = ("--move-processed", inbox / "archive", "--failed", inbox / "failed", "--heatmaps", inbox / "heat",
            "--incomplete-wait", "0")
    for _ in range(2):  # the second run finds only the outputs of the first: nothing to do
        result = watch(tiny_export, inbox, db, *args)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "is inside the inbox: left out of the scan" in result.stderr
        rows = db_rows(db)
        assert sorted(r["file"] for r in rows) == sorted([*data, "broken.jpg"])
    assert all(Path(r["stored_path"]).is_relative_to(inbox / ("archive" if r["status"] == "ok" else "failed"))
               for r in rows)


def test_unwritable_archive_keeps_the_station_up(tiny_export, tmp_path) -> None:
    inbox, db = tmp_path / "inbox", tmp_path / "db.sqlite"
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the archive's parent folder should be")
    data = {f"{i}.jpg": jpeg(inbox / f"{i}.jpg", i) for i in range(3)}
    for attempt in range(2):  # the replay at the next start must not crash either
        result = watch(tiny_export, inbox, db, "--move-processed", blocker / "archive")
        assert result.returncode == 0, result.stderr[-2000:]
        assert "cannot move" in result.stderr and "Traceback" not in result.stderr
        rows = db_rows(db)
        assert len(rows) == 3 and all(r["moved"] == 0 and "cannot move" in r["move_error"] for r in rows), attempt
        assert all((inbox / name).exists() for name in data)
    blocker.unlink()
    result = watch(tiny_export, inbox, db, "--move-processed", blocker / "archive")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = db_rows(db)
    assert len(rows) == 3 and all(r["moved"] == 1 for r in rows)
    assert {Path(r["stored_path"]).name: sha(Path(r["stored_path"]).read_bytes()) for r in rows} == \
        {name: sha(d) for name, d in data.items()}


def test_identical_reupload_is_a_counted_duplicate(tiny_export, tmp_path) -> None:
    inbox, archive, db = tmp_path / "inbox", tmp_path / "archive", tmp_path / "db.sqlite"
    data = jpeg(inbox / "cam" / "a.jpg", 1)
    assert watch(tiny_export, inbox, db, "--move-processed", archive).returncode == 0
    (first,) = db_rows(db)
    (inbox / "cam" / "a.jpg").write_bytes(data)  # the uploader sends the same picture again
    os.utime(inbox / "cam" / "a.jpg", ns=(1, 10**18))
    status = tmp_path / "status.json"
    result = watch(tiny_export, inbox, db, "--move-processed", archive, "--status-file", status)
    assert result.returncode == 0, result.stderr[-2000:]
    assert db_rows(db) == [first], "an identical re-upload is not classified again"
    (dup,) = db_rows(db, "duplicates")
    assert dup["result_id"] == first["id"] and dup["moved"] == 1 and dup["sha256"] == first["sha256"]
    assert json.loads(status.read_text())["duplicates"] == 1
    assert Path(dup["stored_path"]) != Path(first["stored_path"])
    assert Path(dup["stored_path"]).read_bytes() == data == Path(first["stored_path"]).read_bytes()
    assert not (inbox / "cam" / "a.jpg").exists()
    # and a different picture under the same name is a new row, archived beside the others
    new = jpeg(inbox / "cam" / "a.jpg", 2)
    assert watch(tiny_export, inbox, db, "--move-processed", archive).returncode == 0
    rows = db_rows(db)
    assert [r["sha256"] for r in rows] == [first["sha256"], sha(new)]
    assert len({r["stored_path"] for r in rows} | {dup["stored_path"]}) == 3


def test_store_keeps_the_batch_when_one_row_is_refused(tmp_path) -> None:
    store = ResultStore(tmp_path / "db.sqlite")
    bad_name = os.fsdecode(b"caf\xe9.jpg")
    rows = [ImageRecord(source="s", file="good.jpg", sha256="1"),
            ImageRecord(source="s", file=bad_name, sha256="2", failure=f"{bad_name}: broken"),
            ImageRecord(source="s", file="huge.jpg", sha256="3", width=2**70),  # SQLite cannot bind it
            ImageRecord(source="s", file="after.jpg", sha256="4")]
    assert store.add(rows) == 4
    stored = {name_from_db(r["file"], r["file_raw"]): r for r in store.rows()}
    store.close()
    assert set(stored) == {"good.jpg", bad_name, "huge.jpg", "after.jpg"}
    assert stored[bad_name]["file"] == "caf\\xe9.jpg" and stored[bad_name]["file_raw"] == b"caf\xe9.jpg"
    assert stored["huge.jpg"]["status"] == "failed" and "could not be stored" in stored["huge.jpg"]["failure"]
    assert stored["after.jpg"]["status"] == "ok"


@pytest.mark.parametrize("value", ["/abs/dir 00:00:00", "../../../. 00:00:00", "2024-13-45T99:99:99",
                                   "2024-02-30T12:00:00", "1970-01-01T00:00:00", "9999-01-01T00:00:00", "x" * 100,
                                   None])
def test_untrusted_capture_dates_fall_back_to_mtime(value) -> None:
    assert valid_taken_at(value, 1_700_000_000.0) == "2023-11-14T22:13:20"


def test_archive_names_fit_and_stay_one_component() -> None:
    assert valid_taken_at("2024-05-06T07:08:09", 0.0) == "2024-05-06T07:08:09"
    long = "L" * 251 + ".jpg"
    short = fit_name(long, reserve=20, readable=True)
    other = fit_name("M" * 251 + ".jpg", reserve=20, readable=True)
    assert len(short.encode()) <= 235 and short.endswith(".jpg") and short != other
    assert fit_name(os.fsdecode(b"\xff\xfe.jpg"), readable=True) == "\\xff\\xfe.jpg"
    assert len(fit_name("é" * 200 + ".jpg", readable=True).encode()) <= 255


def _start_then_kill_after_commit(model: Path, inbox: Path, db: Path, *extra: object) -> None:
    result = watch(model, inbox, db, *extra, fault="commit")
    assert result.returncode == FAULT_EXIT, result.stderr[-2000:]


def test_jsonl_lines_survive_a_kill_right_after_the_commit(tiny_export, tmp_path) -> None:
    inbox, db, log = tmp_path / "inbox", tmp_path / "db.sqlite", tmp_path / "rows.jsonl"
    for i in range(5):
        jpeg(inbox / f"{i}.jpg", i)
    _start_then_kill_after_commit(tiny_export, inbox, db, "--jsonl", log, "--batch-size", "2")
    with open(log, "a") as fh:
        fh.write('{"id": 99, "torn')  # a line cut by the kill
    result = watch(tiny_export, inbox, db, "--jsonl", log, "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["id"] for line in lines] == [r["id"] for r in db_rows(db)] and len(lines) == 5


@pytest.mark.parametrize("damage", ["truncate_wal", "zero_wal_tail", "truncate_db", "zero_db_tail"])
def test_power_cut_damage_is_recovered(tiny_export, tmp_path, damage: str) -> None:
    inbox, db = tmp_path / "inbox", tmp_path / "db.sqlite"
    data = {f"{i}.jpg": jpeg(inbox / f"{i}.jpg", i) for i in range(4)}
    if damage.endswith("wal"):
        _start_then_kill_after_commit(tiny_export, inbox, db, "--batch-size", "2")  # the WAL is left behind
        target = Path(f"{db}-wal")
    else:
        assert watch(tiny_export, inbox, db).returncode == 0  # a clean close checkpoints into the main file
        target = db
    size = target.stat().st_size
    assert size > 4096
    cut = size * 2 // 3
    with open(target, "r+b") as fh:
        if damage.startswith("truncate"):
            fh.truncate(cut)
        else:
            fh.seek(cut)
            fh.write(b"\x00" * (size - cut))
    result = watch(tiny_export, inbox, db)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    rows = db_rows(db)
    assert sorted(r["file"] for r in rows) == sorted(data), "every file in the inbox has exactly one row"
    assert {r["file"]: r["sha256"] for r in rows} == {n: sha(d) for n, d in data.items()}
    if "corrupt" in result.stderr:
        assert list(tmp_path.glob("db.sqlite.corrupt-*")), "the damaged database is kept aside, not deleted"
