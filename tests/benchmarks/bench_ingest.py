"""Ingest benchmark: pacs-node against dcmtk storescp and Orthanc, with the same sender.

Run on demand, not under pytest::

    python tests/benchmarks/bench_ingest.py [--count 500] [--senders 1 4] [--rounds 3]

Synthetic two-frame NM instances (about 1 MiB each, series of ten) are written once per
sender count before any timing, then sent with dcmtk ``storescu`` (one process per sender,
disjoint file sets) to each receiver started fresh on free loopback ports. The time runs
from the first ``storescu`` start to the last exit; MB are 10^6 bytes of the files sent.
Each receiver is then checked to hold every instance sent; a failed send or a lost
instance makes the exit status non-zero. Every run starts after an ``os.sync()``, so that
no receiver pays for the writeback of the one before (storescp never fsyncs), and what it
stored is deleted before the next run (``--keep`` keeps it).

A shared VM's disk and CPU vary from minute to minute (here Orthanc's rate moved between
53 and 155 inst/s within one hour), so every receiver is run once per round, the rounds
interleaved, and the summary and its ratios use each receiver's median round.

Every run gets new Study, Series and SOP Instance UIDs, so a shared audit database
(``--database-url``) never sees a duplicate that the node would skip instead of storing.
pacs-node and Orthanc fsync each stored file; storescp does not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from pydicom.uid import UID, generate_uid

from pacs_node.synth import synthetic_scan_dataset, write_nm

RECEIVERS = ("pacs-node", "storescp", "orthanc")
LABELS = {"pacs-node": "pacs-node", "storescp": "dcmtk storescp", "orthanc": "Orthanc"}
SERIES_SIZE = 10
SEED = 7
MAX_PDU = "131072"
HOST = "127.0.0.1"
STOP_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 90.0
WORKER_QUEUES = ("enhance", "dispatch")  # the node's local Celery workers
SEND_TIMEOUT_S = 600.0
PACS_NODE = Path(sys.executable).with_name("pacs-node")


class BenchError(Exception):
    """A receiver or sender failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class FileSet:
    """One run's instances, split into one folder per sender."""

    parts: tuple[Path, ...]
    sop_instance_uids: frozenset[str]
    total_bytes: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    ae_title: str
    port: int


@dataclass(frozen=True, slots=True)
class RunResult:
    receiver: str
    senders: int
    instances: int
    total_bytes: int
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Receiver(Protocol):
    """A storage SCP that can be started in a folder, stopped and asked what it stored."""

    #: Whether :meth:`stored` asks the running receiver rather than reading what it left.
    count_while_running: bool

    def start(self, work: Path) -> Endpoint: ...

    def stop(self) -> None: ...

    def stored(self, expected: frozenset[str]) -> int: ...


def dcmtk_env() -> dict[str, str]:
    """Without TCP_NODELAY dcmtk peers stall about 40 ms per instance on loopback."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.1)


def spawn(
    cmd: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL the process group if it has not exited in 20 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"  pid {proc.pid} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s; killing", flush=True)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def alive_or_raise(proc: subprocess.Popen[bytes], name: str, log: Path) -> bool:
    if proc.poll() is not None:
        tail = log.read_text(errors="replace")[-2000:]
        raise BenchError(f"{name} exited with {proc.returncode} while starting:\n{tail}")
    return True


def dicom_echo(endpoint: Endpoint) -> bool:
    cmd = ["echoscu", "-to", "2", "-aec", endpoint.ae_title, HOST, str(endpoint.port)]
    result = subprocess.run(cmd, env=dcmtk_env(), capture_output=True, check=False)
    return result.returncode == 0


class PacsNodeReceiver:
    """``pacs-node serve`` with a fresh data directory and a one-process-per-core receiver.

    The whole node runs, enhancement pipeline included; timing starts once its local
    workers are ready, as on a node that has been up for a while (their start-up, imports
    of torch and Celery, takes seconds of both cores).
    """

    count_while_running = False

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.config: Path | None = None
        self.log: Path | None = None

    def start(self, work: Path) -> Endpoint:
        port = free_port()
        self.config = work / "pacs-node.toml"
        self.config.write_text(
            "[node]\n"
            'ae_title = "PACS_NODE"\n'
            f'host = "{HOST}"\n'
            f"port = {port}\n"
            "receiver_processes = 0\n"
            "[storage]\n"
            f"data_dir = {json.dumps(str(work / 'pacs-node-data'))}\n"
            "min_free_disk_mb = 64\n"
            "[audit]\n"
            f"database_url = {json.dumps(self.database_url)}\n"
        )
        log = self.log = work / "pacs-node.log"
        self.proc = spawn([str(PACS_NODE), "serve", "--config", str(self.config)], log)
        proc = self.proc

        def ready() -> bool:
            if not alive_or_raise(proc, "pacs-node", log):
                return False
            text = log.read_text(errors="replace")
            workers_ready = all(
                re.search(rf"pacs-node-{queue}@\S+ ready\.", text) for queue in WORKER_QUEUES
            )
            return "pacs-node listening on" in text and workers_ready

        wait_for(ready, READY_TIMEOUT_S, "pacs-node")
        return Endpoint("PACS_NODE", port)

    def stop(self) -> None:
        stop_process(self.proc)
        if self.log is not None and "Traceback" in (text := self.log.read_text(errors="replace")):
            last = text[text.rindex("Traceback") :].strip().splitlines()[-1]
            print(f"  warning: pacs-node logged a traceback ({last}) in {self.log}", flush=True)

    def stored(self, expected: frozenset[str]) -> int:
        assert self.config is not None
        cmd = [str(PACS_NODE), "audit", "instances", "--config", str(self.config), "--json"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
        if result.returncode != 0:
            raise BenchError(f"pacs-node audit failed: {result.stderr.strip()}")
        rows = json.loads(result.stdout)
        return len({row["sop_instance_uid"] for row in rows} & expected)


class StoreScpReceiver:
    """dcmtk ``storescp --fork``: one child per association, files named ``NM.<uid>``."""

    count_while_running = False

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.out_dir: Path | None = None

    def start(self, work: Path) -> Endpoint:
        port = free_port()
        self.out_dir = work / "storescp-data"
        self.out_dir.mkdir()
        log = work / "storescp.log"
        cmd = ["storescp", "--fork", "-pdu", MAX_PDU, "--output-directory", str(self.out_dir)]
        self.proc = spawn([*cmd, str(port)], log, dcmtk_env())
        endpoint = Endpoint("STORESCP", port)
        proc = self.proc
        wait_for(
            lambda: alive_or_raise(proc, "storescp", log) and dicom_echo(endpoint),
            READY_TIMEOUT_S,
            "storescp",
        )
        return endpoint

    def stop(self) -> None:
        stop_process(self.proc)

    def stored(self, expected: frozenset[str]) -> int:
        assert self.out_dir is not None
        names = {p.name.partition(".")[2] for p in self.out_dir.rglob("*") if p.is_file()}
        return len(names & expected)


class OrthancReceiver:
    """Orthanc with its default threads and fsync, no plugins, the same PDU as storescp."""

    count_while_running = True

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = 0

    def start(self, work: Path) -> Endpoint:
        dicom_port, self.http_port = free_port(), free_port()
        config = {
            "Name": "bench",
            "StorageDirectory": str(work / "orthanc-storage"),
            "IndexDirectory": str(work / "orthanc-index"),
            "StorageCompression": False,
            "SyncStorageArea": True,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": "ORTHANC",
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            # Orthanc's default is 16 KiB; storescp gets the same 128 KiB as here.
            "MaximumPduLength": int(MAX_PDU),
            # Orthanc 1.10 defaults, written out so the comparison says what it ran.
            "ConcurrentJobs": 2,
            "DicomThreadsCount": 4,
        }
        config_path = work / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = work / "orthanc.log"
        self.proc = spawn(["Orthanc", str(config_path)], log, dcmtk_env())
        proc = self.proc

        def ready() -> bool:
            alive_or_raise(proc, "Orthanc", log)
            try:
                self._get("/system")
            except (urllib.error.URLError, OSError):
                return False
            return True

        wait_for(ready, READY_TIMEOUT_S, "Orthanc")
        return Endpoint("ORTHANC", dicom_port)

    def _get(self, path: str) -> object:
        url = f"http://{HOST}:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        stop_process(self.proc)

    def stored(self, expected: frozenset[str]) -> int:
        stats = self._get("/statistics")
        assert isinstance(stats, dict)
        return int(stats["CountInstances"])


def make_receiver(name: str, database_url: str) -> Receiver:
    if name == "pacs-node":
        return PacsNodeReceiver(database_url)
    if name == "storescp":
        return StoreScpReceiver()
    return OrthancReceiver()


def write_file_set(out_dir: Path, count: int, senders: int, nonce: str) -> FileSet:
    """Write ``count`` NM instances in series of ten, split contiguously over ``senders``."""
    parts = tuple(out_dir / f"sender_{i}" for i in range(senders))
    for part in parts:
        part.mkdir(parents=True)
    uids: set[str] = set()
    total = 0
    ds = None
    study = series = UID("")
    for i in range(count):
        group, position = divmod(i, SERIES_SIZE)
        if position == 0:
            ds = synthetic_scan_dataset(SEED, group + 1)
            study = generate_uid(entropy_srcs=[nonce, str(senders), str(group), "study"])
            series = generate_uid(entropy_srcs=[nonce, str(senders), str(group), "series"])
        assert ds is not None
        sop = generate_uid(entropy_srcs=[nonce, str(senders), str(i), "instance"])
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = position + 1
        path = write_nm(parts[i * senders // count] / f"nm_{i:05d}.dcm", ds)
        total += path.stat().st_size
        uids.add(str(sop))
    return FileSet(parts, frozenset(uids), total)


def send(files: FileSet, endpoint: Endpoint, log_dir: Path) -> float:
    """Run one storescu per folder at once; seconds from the first start to the last exit."""
    cmd = ["storescu", "-pdu", MAX_PDU, "-aet", "BENCH", "-aec", endpoint.ae_title]
    cmd += [HOST, str(endpoint.port), "+sd"]
    env = dcmtk_env()
    start = time.perf_counter()
    procs = [
        spawn([*cmd, str(part)], log_dir / f"storescu_{i}.log", env)
        for i, part in enumerate(files.parts)
    ]
    codes = [proc.wait(SEND_TIMEOUT_S) for proc in procs]
    seconds = time.perf_counter() - start
    if any(codes):
        raise BenchError(f"storescu exit codes {codes}; see {log_dir}/storescu_*.log")
    return seconds


def measure(receiver: Receiver, files: FileSet, work: Path) -> tuple[float, int]:
    """Seconds to send ``files`` and how many of them the receiver then holds."""
    try:
        endpoint = receiver.start(work)
        # The previous run's writes (storescp's 500 MB are never fsynced) and this
        # receiver's start-up are flushed first: their writeback would otherwise run under
        # this run and slow every fsync of it.
        os.sync()
        seconds = send(files, endpoint, work)
        if receiver.count_while_running:
            return seconds, receiver.stored(files.sop_instance_uids)
    finally:
        receiver.stop()
    return seconds, receiver.stored(files.sop_instance_uids)


def run_one(
    name: str, senders: int, files: FileSet, work: Path, database_url: str, *, keep: bool
) -> RunResult:
    work.mkdir(parents=True)
    count = len(files.sop_instance_uids)
    try:
        seconds, stored = measure(make_receiver(name, database_url), files, work)
    except (BenchError, OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return RunResult(name, senders, count, files.total_bytes, 0.0, str(exc))
    finally:
        if not keep:
            # What a run stored (500 MB) is gone before the next starts: runs do not see
            # a disk that fills round by round.
            shutil.rmtree(work, ignore_errors=True)
    error = None if stored == count else f"stored {stored} of {count} instances sent"
    return RunResult(name, senders, count, files.total_bytes, seconds, error)


def machine_lines() -> list[str]:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    versions = []
    for cmd in (["storescu", "--version"], ["Orthanc", "--version"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        versions.append(out.splitlines()[0].strip() if out else f"{cmd[0]}: unknown")
    return [
        f"date: {now}",
        f"machine: {os.cpu_count()} CPUs, {model}",
        f"peers: {'; '.join(versions)}",
    ]


def medians(results: Sequence[RunResult]) -> list[RunResult]:
    """Per receiver and sender count, the round with the median time (failures count as
    failures: a receiver that failed any round is shown failed)."""
    summary = []
    keys = dict.fromkeys((r.receiver, r.senders) for r in results)
    for receiver, senders in keys:
        runs = [r for r in results if (r.receiver, r.senders) == (receiver, senders)]
        failed = next((r for r in runs if not r.ok), None)
        if failed is not None:
            summary.append(failed)
            continue
        runs.sort(key=lambda r: r.seconds)
        summary.append(runs[(len(runs) - 1) // 2])
    return summary


def table(results: Sequence[RunResult]) -> str:
    head = f"{'receiver':<16}  {'senders':>7}  {'instances':>9}  {'seconds':>8}  "
    lines = [head + f"{'inst/s':>7}  {'MB/s':>7}  result"]
    for r in results:
        rate = r.instances / r.seconds if r.seconds else 0.0
        mbs = r.total_bytes / 1e6 / r.seconds if r.seconds else 0.0
        status = "ok" if r.error is None else f"FAILED: {r.error.splitlines()[0]}"
        lines.append(
            f"{LABELS[r.receiver]:<16}  {r.senders:>7}  {r.instances:>9}  {r.seconds:>8.2f}  "
            f"{rate:>7.1f}  {mbs:>7.1f}  {status}"
        )
    return "\n".join(lines)


def plural(senders: int) -> str:
    return f"{senders} sender" + ("s" if senders != 1 else "")


def ratio_lines(results: Sequence[RunResult], senders: Sequence[int]) -> list[str]:
    """Throughput ratios (MB/s) between receivers and between sender counts."""
    rate = {
        (r.receiver, r.senders): r.total_bytes / r.seconds
        for r in results
        if r.ok and r.seconds > 0
    }

    def fmt(a: tuple[str, int], b: tuple[str, int]) -> str:
        return f"{rate[a] / rate[b]:.2f}" if a in rate and b in rate else "n/a"

    lines = []
    for other in ("orthanc", "storescp"):
        parts = [f"({plural(s)}) = {fmt(('pacs-node', s), (other, s))}" for s in senders]
        lines.append(f"pacs-node / {LABELS[other]}: " + ", ".join(parts))
    base = senders[0]
    for s in senders[1:]:
        parts = [f"{LABELS[n]} = {fmt((n, s), (n, base))}" for n in RECEIVERS]
        lines.append(f"{plural(s)} / {plural(base)}: " + ", ".join(parts))
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="instances per run")
    parser.add_argument("--senders", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--receivers", nargs="+", choices=RECEIVERS, default=list(RECEIVERS))
    parser.add_argument("--rounds", type=int, default=3, help="runs of each receiver")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--database-url", default="", help="pacs-node audit DB; empty = SQLite in its data dir"
    )
    args = parser.parse_args(argv)
    if args.count < 1 or min(args.senders) < 1 or max(args.senders) > args.count:
        parser.error("need --count >= 1 and 1 <= each of --senders <= --count")
    if args.rounds < 1:
        parser.error("need --rounds >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    nonce = secrets.token_hex(8)
    results: list[RunResult] = []
    try:
        file_sets = {}
        for senders in args.senders:
            print(f"writing {args.count} instances for {plural(senders)} ...", flush=True)
            file_sets[senders] = write_file_set(
                root / f"data-{senders}", args.count, senders, nonce
            )
        # The file sets were just written: without this their writeback (about 1 GB) runs
        # under the first round's receivers and slows every fsync of theirs.
        os.sync()
        for round_ in range(1, args.rounds + 1):
            for senders in args.senders:
                for name in args.receivers:
                    print(f"round {round_}: {LABELS[name]}, {plural(senders)} ...", flush=True)
                    work = root / f"run-{round_}-{name}-{senders}"
                    result = run_one(
                        name, senders, file_sets[senders], work, args.database_url, keep=args.keep
                    )
                    if not result.ok:
                        print(f"  FAILED: {result.error}", flush=True)
                    results.append(result)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print("\n".join(machine_lines()))
    print()
    print("every round:")
    print(table(results))
    print()
    summary = medians(results)
    print(f"median of {args.rounds} rounds:")
    print(table(summary))
    print()
    print("ratios of MB/s (medians):")
    print("\n".join(f"  {line}" for line in ratio_lines(summary, args.senders)))
    # The medians may come from different rounds; runs of one round are minutes apart and
    # so share the machine's state.
    print("ratios of MB/s within each round:")
    per_round = len(args.senders) * len(args.receivers)
    for k in range(args.rounds):
        in_round = results[k * per_round : (k + 1) * per_round]
        print("\n".join(f"  round {k + 1}: {line}" for line in ratio_lines(in_round, args.senders)))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
