"""The PACS sender against a real Orthanc: statuses read, refusals named, re-sends replace."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from nodeharness import free_port
from orthanc import AE_TITLE, HOST, running_orthanc
from pydicom import dcmread

from pacs_node.sender import (
    Destination,
    RetryPolicy,
    StoreOutcome,
    classify_store_status,
    describe_store_status,
    store_files,
)

# Orthanc 1.10 acknowledges an instance its filter merely drops (status 0x0000); a filter that
# fails makes it refuse the C-STORE with a failure status.
REFUSE_ALL = "function ReceivedInstanceFilter(dicom, origin, info)\n  error('full')\nend\n"


def _destination(port: int, ae_title: str = AE_TITLE) -> Destination:
    return Destination(name="pacs", ae_title=ae_title, host=HOST, port=port)


def test_statuses_are_classified_and_described_from_ps3_4() -> None:
    assert classify_store_status(0x0000) is StoreOutcome.SUCCESS
    for warning in (0xB000, 0xB006, 0xB007):
        assert classify_store_status(warning) is StoreOutcome.WARNING
    for failure in (0xA700, 0xA900, 0xC210, 0x0122, None):
        assert classify_store_status(failure) is StoreOutcome.FAILURE
    assert describe_store_status(0xA700) == "0xA700 Refused: Out of Resources"
    assert describe_store_status(None) == "no response"
    assert describe_store_status(0x0000) == "0x0000 Success"


def test_the_retry_policy_backs_off_with_jitter_up_to_a_cap_then_gives_up() -> None:
    policy = RetryPolicy(initial_delay_s=10, max_delay_s=300, jitter=0.25, give_up_after_s=3600)
    rng = random.Random(1)
    delays = [policy.delay_after(n, rng) for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(300.0, 10.0 * 2 ** (n - 1))
        assert 0.75 * ceiling <= delay <= ceiling
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not lock-step
    first = 1000.0
    assert policy.next_attempt_at(first_failure_at=first, now=first, failures=1, rng=rng) > first
    # The last attempt is at the deadline at the latest; after it, give up.
    late = policy.next_attempt_at(first_failure_at=first, now=first + 3590, failures=9, rng=rng)
    assert late == first + 3600
    assert (
        policy.next_attempt_at(first_failure_at=first, now=first + 3600, failures=10, rng=rng)
        is None
    )
    with pytest.raises(ValueError, match=r"jitter 1\.5 is not in"):
        RetryPolicy(jitter=1.5)


def test_a_derived_series_is_stored_with_every_status_read(
    derived_files: list[Path], tmp_path: Path
) -> None:
    with running_orthanc(tmp_path / "pacs") as pacs:
        report = store_files(_destination(pacs.dicom_port), derived_files, calling_ae="PACS_NODE")
        assert report.delivered, report.reason()
        assert [r.status for r in report.results] == [0x0000] * len(derived_files)
        sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in derived_files}
        assert pacs.instance_uids() == sent
        # A re-run carries the same UIDs: Orthanc keeps one copy of each.
        again = store_files(_destination(pacs.dicom_port), derived_files, calling_ae="PACS_NODE")
        assert again.delivered
        assert len(pacs.get("/instances")) == len(sent)


def test_a_pacs_that_refuses_each_instance_is_a_failure_with_its_status(
    derived_files: list[Path], tmp_path: Path
) -> None:
    with running_orthanc(tmp_path / "pacs", lua=REFUSE_ALL) as pacs:
        report = store_files(_destination(pacs.dicom_port), derived_files, calling_ae="PACS_NODE")
        assert not report.delivered
        assert len(report.failures) == len(derived_files)
        for result in report.failures:
            assert result.status is not None and classify_store_status(result.status) is (
                StoreOutcome.FAILURE
            )
            assert result.reason.startswith(f"0x{result.status:04X}")
        assert pacs.instance_uids() == set()
        assert "and 2 more" in report.reason()


def test_a_rejected_association_and_a_pacs_that_is_down_are_named(
    derived_files: list[Path], tmp_path: Path
) -> None:
    with running_orthanc(tmp_path / "pacs", check_called_ae=True) as pacs:
        report = store_files(
            _destination(pacs.dicom_port, ae_title="NOT_ORTHANC"),
            derived_files,
            calling_ae="PACS_NODE",
        )
    assert not report.delivered and report.results == ()
    assert report.association_error is not None
    assert report.association_error.startswith("association rejected"), report.association_error
    assert "Called AE" in report.association_error or "called" in report.association_error
    down = store_files(_destination(free_port()), derived_files, calling_ae="PACS_NODE")
    assert not down.delivered
    assert down.association_error is not None and "pacs:" in down.reason()


def test_an_unreadable_file_is_a_local_error_named_by_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom")
    with pytest.raises(ValueError, match=r"bad\.dcm: not a DICOM object"):
        store_files(_destination(free_port()), [bad], calling_ae="PACS_NODE")
