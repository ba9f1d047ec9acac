"""Pipeline benchmark: association release → derived series stored in Orthanc.

Run on demand, not under pytest::

    python tests/benchmarks/bench_pipeline.py [--studies 20] [--quiet-period 10]
        [--burst 8] [--workers 1 2]

It starts Orthanc (the PACS) and ``pacs-node serve`` on loopback ports, both in a temporary
directory, with the embedded broker, SQLite, the shipped default model (``fast`` profile on
the CPU) and the node's own enhance and dispatch workers. Latency: ``--studies`` synthetic
40 cm/min scans are sent one at a time with dcmtk ``storescu``; each latency runs from the
moment storescu exits (the association is released) to the moment Orthanc's REST API shows
the derived series in that study. The quiet period (completion waits for it) is printed
beside it, as is the rest (latency minus the quiet period: queueing, enhancement, the C-STORE
and Orthanc's indexing). Throughput: ``--burst`` studies sent back to back, timed from the
first release to the last derived series (the quiet period included once), and the steady
rate between the first and the last derived series to arrive (the quiet period excluded),
for each ``--workers`` count (enhance worker processes; torch's CPU threads are divided
among them), in studies per hour.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the tests' helpers: real Orthanc, node harness

from nodeharness import DCMTK_ENV, Node, free_port, running, write_config  # noqa: E402
from orthanc import AE_TITLE, HOST, Orthanc, running_orthanc  # noqa: E402
from pydicom import dcmread  # noqa: E402

from pacs_node.synth import write_synthetic_scans  # noqa: E402


def make_node(work: Path, pacs_port: int, *, quiet_period: float, workers: int) -> Node:
    port = free_port()
    destination = {"name": "orthanc", "ae_title": AE_TITLE, "host": HOST, "port": pacs_port}
    sections = {
        "node": {"host": "127.0.0.1", "port": port},
        "storage": {"data_dir": work / "data", "min_free_disk_mb": 1},
        "completion": {"quiet_period_s": quiet_period, "poll_interval_s": 0.2},
        "pipeline": {
            "device": "cpu",
            "profile": "fast",
            "reconcile_interval_s": 1.0,
            "local_enhance_concurrency": workers,
        },
        "delivery": {"destinations": [destination]},
    }
    work.mkdir(parents=True, exist_ok=True)
    config = write_config(work / "pacs-node.toml", sections, [])
    return Node(config=config, port=port, data_dir=work / "data", log=work / "node.log")


def send(node: Node, scan: Path) -> float:
    """storescu one scan; returns the time its association was released (it exited)."""
    done = subprocess.run(
        ["storescu", "-aet", "GAMMA_CAM", "-aec", node.ae_title, "127.0.0.1", str(node.port),
         str(scan)],
        capture_output=True, text=True, env=DCMTK_ENV, timeout=120,
    )  # fmt: skip
    released = time.monotonic()
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stderr}")
    return released


def derived_arrived(pacs: Orthanc, study_uid: str) -> bool:
    return len(pacs.series_of_study(study_uid)) >= 1


def wait_for_derived(pacs: Orthanc, study_uids: list[str], timeout: float) -> dict[str, float]:
    """When each study's derived series appeared (monotonic seconds)."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(study_uids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {len(study_uids)} derived series arrived")
        for uid in study_uids:
            if uid not in seen and derived_arrived(pacs, uid):
                seen[uid] = time.monotonic()
        time.sleep(0.05)
    return seen


def warm_up(node: Node, pacs: Orthanc, scans: list[Path]) -> None:
    """A study per enhance process first, back to back so each process gets one and has
    loaded the model before anything is timed."""
    for scan in scans:
        send(node, scan)
    uids = [str(dcmread(s, stop_before_pixels=True).StudyInstanceUID) for s in scans]
    wait_for_derived(pacs, uids, 300)


def latency_run(work: Path, scans: list[Path], quiet_period: float) -> list[float]:
    with running_orthanc(work / "pacs") as pacs:
        node = make_node(work / "node", pacs.dicom_port, quiet_period=quiet_period, workers=1)
        with running(node):
            warm_up(node, pacs, scans[:1])
            latencies = []
            for scan in scans[1:]:
                uid = str(dcmread(scan, stop_before_pixels=True).StudyInstanceUID)
                released = send(node, scan)
                arrived = wait_for_derived(pacs, [uid], quiet_period + 300)[uid]
                latencies.append(arrived - released)
            return latencies


def throughput_run(
    work: Path, scans: list[Path], quiet_period: float, workers: int
) -> tuple[float, float]:
    """(burst rate, steady rate) in studies per hour."""
    with running_orthanc(work / "pacs") as pacs:
        node = make_node(work / "node", pacs.dicom_port, quiet_period=quiet_period, workers=workers)
        with running(node):
            warm_up(node, pacs, scans[:workers])
            burst = scans[workers:]
            uids = [str(dcmread(s, stop_before_pixels=True).StudyInstanceUID) for s in burst]
            first = time.monotonic()
            for scan in burst:
                send(node, scan)
            arrived = wait_for_derived(pacs, uids, quiet_period + 60 * len(burst))
            last, first_out = max(arrived.values()), min(arrived.values())
            burst_rate = len(burst) / (last - first) * 3600.0
            steady_rate = (len(burst) - 1) / (last - first_out) * 3600.0
            return burst_rate, steady_rate


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20, help="timed studies for latency")
    parser.add_argument("--quiet-period", type=float, default=10.0, help="seconds")
    parser.add_argument("--burst", type=int, default=8, help="studies per throughput run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        most = max(args.workers)
        count = max(args.studies + 1, args.burst + most)
        scans = write_synthetic_scans(work / "scans", count=count, seed=77, speed_cm_min=40)
        latencies = latency_run(work / "latency", scans[: args.studies + 1], args.quiet_period)
        rates = {
            n: throughput_run(work / f"burst{n}", scans[: args.burst + n], args.quiet_period, n)
            for n in args.workers
        }
    median, high = statistics.median(latencies), p95(latencies)
    target = args.quiet_period + 5.0
    print(f"pacs-node pipeline benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs")
    print("default model, fast profile, CPU; embedded broker; SQLite; Orthanc on loopback\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| studies timed | {len(latencies)} |")
    print(f"| quiet period (s) | {args.quiet_period:.1f} |")
    print(f"| latency median (s) | {median:.2f} |")
    print(f"| latency p95 (s) | {high:.2f} |")
    print(f"| latency beyond the quiet period, median / p95 (s) | "
          f"{median - args.quiet_period:.2f} / {high - args.quiet_period:.2f} |")  # fmt: skip
    for n, (burst_rate, steady_rate) in rates.items():
        print(f"| throughput, {n} enhance worker(s), burst of {args.burst} incl. quiet period "
              f"(studies/h) | {burst_rate:.0f} |")  # fmt: skip
        print(f"| throughput, {n} enhance worker(s), steady: first to last result "
              f"(studies/h) | {steady_rate:.0f} |")  # fmt: skip
    verdict = "met" if high <= target else "NOT met"
    print(f"\ntarget: latency <= quiet period + 5 s = {target:.1f} s (p95): {verdict}")
    if args.json:
        args.json.write_text(
            json.dumps({"latencies_s": latencies, "throughput_per_h": rates}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
