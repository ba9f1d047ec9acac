"""``pacs-node worker`` and ``pacs-node jobs retry|resend|force-send``.

Admin commands move a job by compare-and-set, like every other actor, and each move is in
the job's append-only log with the actor ``admin``; the node's reconciler then publishes it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from pacs_node.audit.db import make_engine
from pacs_node.audit.job_store import JobStore
from pacs_node.audit.models import JobState
from pacs_node.config import Settings

__all__ = ["add_commands"]

S = JobState
ADMIN = "admin"
WORKER_QUEUES = ("enhance", "dispatch")


class CliError(Exception):
    """A command that cannot run; the message says why (exit status 2)."""


def torch_threads_per_process(cores: int, processes: int) -> int:
    """The cores shared out among the enhance processes, at least one each."""
    return max(1, cores // max(1, processes))


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from pacs_node.pipeline.celery_app import DISPATCH_QUEUE, make_celery
    from pacs_node.pipeline.tasks import register_tasks

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(WORKER_QUEUES))
    if not queues or unknown:
        raise CliError(f"--queues {args.queues!r}: choose from {', '.join(WORKER_QUEUES)}")
    pipeline = settings.pipeline
    if pipeline.broker_url == "embedded":
        raise CliError(
            "a worker needs the broker's Redis URL: set [pipeline] broker_url "
            "(pacs-node serve passes its embedded broker to the workers it starts)"
        )
    app = make_celery(pipeline.broker_url, visibility_timeout_s=pipeline.visibility_timeout_s)
    # Enhancement: one prefork child per device, each loading the model once. Dispatch is
    # network I/O: threads.
    io_only = queues == [DISPATCH_QUEUE]
    concurrency = args.concurrency or (4 if io_only else 1)
    if not io_only and not pipeline.torch_threads:
        threads = torch_threads_per_process(len(os.sched_getaffinity(0)), concurrency)
        settings = settings.model_copy(
            update={"pipeline": pipeline.model_copy(update={"torch_threads": threads})}
        )
    register_tasks(app, settings)
    argv = [
        "worker",
        "--queues", ",".join(queues),
        "--concurrency", str(concurrency),
        "--pool", "threads" if io_only else "prefork",
        "--prefetch-multiplier", "1",
        "--hostname", f"pacs-node-{'-'.join(queues)}@%h",
        "--loglevel", args.log_level,
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    app.worker_main(argv)
    return 0


def _retry(jobs: JobStore, args: argparse.Namespace) -> str:
    if not jobs.move(
        args.job_id,
        S.PENDING,
        expect=[S.FAILED, S.IGNORED],
        actor=ADMIN,
        reason="re-run by an admin (jobs retry)",
        changes={"force_send": False},
    ):
        raise CliError(f"job {args.job_id} is {jobs.get(args.job_id).state}, not failed or ignored")
    return f"job {args.job_id}: pending; the node queues it for enhancement"


def _force_send(jobs: JobStore, args: argparse.Namespace) -> str:
    job = jobs.get(args.job_id)
    if job.qc_passed is not False or not job.output_dir:
        raise CliError(f"job {args.job_id} did not fail the QC; nothing to force")
    if not jobs.move(
        args.job_id,
        S.ENHANCED,
        expect=[S.FAILED],
        actor=ADMIN,
        reason=f"sent despite a failed QC, by an admin ({job.qc_reason})",
        changes=_fresh_delivery() | {"force_send": True},
    ):
        raise CliError(f"job {args.job_id} is {jobs.get(args.job_id).state}, not failed")
    return f"job {args.job_id}: enhanced, forced; the node sends it"


def _resend(jobs: JobStore, args: argparse.Namespace) -> str:
    moved = []
    for job in jobs.jobs_of_study(args.study):
        if job.output_dir and jobs.move(
            job.id,
            S.ENHANCED,
            expect=[S.SENT, S.FAILED] if job.qc_passed is not False else [S.SENT],
            actor=ADMIN,
            reason="re-sent by an admin (jobs resend)",
            changes=_fresh_delivery(),
        ):
            moved.append(job.id)
    if not moved:
        raise CliError(f"study {args.study}: no sent or failed job with derived files to resend")
    return f"jobs {', '.join(map(str, moved))}: enhanced; the node sends them again"


def _fresh_delivery() -> dict[str, Any]:
    return {"send_attempts": 0, "first_send_failure_at": None, "next_send_at": None}


def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    engine = make_engine(settings.database_url)
    try:
        jobs = JobStore(engine)
        try:
            print(args.action(jobs, args))
        except KeyError as exc:
            raise CliError(str(exc.args[0])) from None
    finally:
        engine.dispose()
    return 0


def add_commands(
    sub: Any,
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    run: Callable[[Callable[[argparse.Namespace, Settings], int]], Callable[..., int]],
) -> None:
    """Add ``worker`` and ``jobs`` to the ``pacs-node`` parser.

    ``run`` wraps a command that takes the parsed arguments and the settings.
    """
    worker = with_config(sub.add_parser("worker", help="run a Celery worker (enhance, dispatch)"))
    worker.add_argument("--queues", default="enhance", help="enhance, dispatch, or both")
    worker.add_argument("--concurrency", type=int, help="default: 1 (enhance), 4 (dispatch)")
    worker.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    worker.set_defaults(func=run(_worker))

    jobs = sub.add_parser("jobs", help="re-run, resend or force-send jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    retry = with_config(jobs_sub.add_parser("retry", help="re-run a failed job from the start"))
    retry.add_argument("job_id", type=int)
    retry.set_defaults(func=run(_jobs), action=_retry)
    force = with_config(jobs_sub.add_parser("force-send", help="send a job that failed QC"))
    force.add_argument("job_id", type=int)
    force.set_defaults(func=run(_jobs), action=_force_send)
    resend = with_config(jobs_sub.add_parser("resend", help="send a study's results again"))
    resend.add_argument("--study", required=True, help="Study Instance UID")
    resend.set_defaults(func=run(_jobs), action=_resend)
