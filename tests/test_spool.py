"""The spool's placement of received files: a new series directory is durable in its
parents before any file placed in it counts as durable."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from pacs_node.receiver import spool as spool_module
from pacs_node.receiver.spool import Placement, SealedFile, Spool

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.2"


def _received(spool: Spool, name: str) -> SealedFile:
    path = spool.incoming / name
    data = name.encode() * 100
    path.write_bytes(data)
    return SealedFile(path, hashlib.sha256(data).hexdigest(), len(data))


def _place(spool: Spool, sop_uid: str, series_uid: str = SERIES) -> Placement:
    sealed = _received(spool, sop_uid)
    relative = spool.relative_path(STUDY, series_uid, sop_uid, sealed.sha256)
    synced: Future[None] = Future()
    synced.set_result(None)
    placement = spool.place_new(sealed, relative, synced)
    assert placement is not None
    assert (spool.root / relative).read_bytes() == sealed.path.read_bytes()
    return placement


def _durable_within(placement: Placement, seconds: float) -> bool:
    waiter = threading.Thread(target=placement.wait_durable, daemon=True)
    waiter.start()
    waiter.join(seconds)
    return not waiter.is_alive()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool", tmp_path / "incoming")
    spool.prepare()
    return spool


def test_every_placement_in_a_new_series_waits_for_its_parents_fsync(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    synced_dirs: list[Path] = []
    real = spool_module._fsync_parents

    def gated(series_dir: Path) -> None:
        gate.wait(10)
        real(series_dir)
        synced_dirs.append(series_dir)

    monkeypatch.setattr(spool_module, "_fsync_parents", gated)
    first = _place(spool, "1.2.3.1")
    second = _place(spool, "1.2.3.2")  # the directory exists now, but is not yet durable
    assert not _durable_within(first, 0.2)
    assert not _durable_within(second, 0.2)

    gate.set()
    assert _durable_within(first, 10) and _durable_within(second, 10)
    series_dir = spool.root / STUDY / SERIES
    assert synced_dirs == [series_dir]  # made once, its parents fsynced once

    # Once that fsync is seen done, later placements there wait only for their own.
    third = _place(spool, "1.2.3.3")
    assert _durable_within(third, 10)
    assert len(third._pending) == 2
    assert synced_dirs == [series_dir]


def test_a_failed_parents_fsync_fails_its_placements_and_is_tried_again(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[Path] = []
    real = spool_module._fsync_parents

    def fails_once(series_dir: Path) -> None:
        attempts.append(series_dir)
        if len(attempts) == 1:
            raise OSError(5, "Input/output error")
        real(series_dir)

    monkeypatch.setattr(spool_module, "_fsync_parents", fails_once)
    first = _place(spool, "1.2.3.1")
    with pytest.raises(OSError, match="Input/output error"):
        first.wait_durable()

    second = _place(spool, "1.2.3.2")
    second.wait_durable()
    assert len(attempts) == 2
    assert len(second._pending) == 3  # the file, its directory and the retried parents


def test_done_parents_fsyncs_are_forgotten_but_failed_ones_kept(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = f"{SERIES}.0"
    real = spool_module._fsync_parents

    def fails_for_one(series_dir: Path) -> None:
        if series_dir.name == failing:
            raise OSError(5, "Input/output error")
        real(series_dir)

    monkeypatch.setattr(spool_module, "_fsync_parents", fails_for_one)
    placements = [
        _place(spool, f"1.2.3.{i}", series_uid=f"{SERIES}.{i}")
        for i in range(spool_module._NEW_DIRS_KEPT + 5)
    ]
    for placement in placements[1:]:
        placement.wait_durable()
    with pytest.raises(OSError):
        placements[0].wait_durable()
    _place(spool, "1.2.4.1", series_uid=f"{SERIES}.999")

    remembered = set(spool._new_dirs)
    assert len(remembered) <= spool_module._NEW_DIRS_KEPT
    assert spool.root / STUDY / failing in remembered
