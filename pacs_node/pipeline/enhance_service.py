"""The enhancement step of a job: claim it, enhance its series, write the derived series.

The claim (``queued`` → ``enhancing`` with a lease) comes first, so a message delivered twice
does its work once. The derived files are written into ``derived/<job>.partial`` and renamed
to ``derived/<job>`` in one step, so a worker killed mid-job leaves no half series that a
sender could push. The count-fidelity QC decides: a result that fails it is kept but the job
fails with the reason, and only an admin's ``jobs force-send`` sends it.

The enhancer (and torch) is imported on first use in the worker process only.
"""

from __future__ import annotations

import logging
import shutil
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

from pacs_node.audit.job_store import Provenance
from pacs_node.audit.models import JobState, utcnow
from pacs_node.config import Settings
from pacs_node.derived import OutputKind
from pacs_node.pipeline.context import WorkerContext
from pacs_node.pipeline.heartbeat import Heartbeat

__all__ = ["load_enhancer", "run_enhancement"]

logger = logging.getLogger(__name__)

S = JobState


def load_enhancer(settings: Settings) -> Any:
    """The configured model (a checkpoint, or the shipped default), loaded once."""
    import torch

    from enhancer.runtime import Enhancer

    pipeline = settings.pipeline
    if pipeline.torch_threads:
        torch.set_num_threads(pipeline.torch_threads)
    if pipeline.checkpoint is not None:
        return Enhancer.from_checkpoint(
            pipeline.checkpoint, device=pipeline.device, profile=pipeline.profile
        )
    return Enhancer.default(device=pipeline.device, profile=pipeline.profile)


def run_enhancement(ctx: WorkerContext, job_id: int) -> bool:
    """Do job ``job_id``'s enhancement if it is still queued; True if this call did it."""
    owner, jobs, lease = ctx.owner, ctx.jobs, ctx.settings.pipeline.lease_s
    actor = f"worker {owner}"
    claimed = jobs.move(
        job_id,
        S.ENHANCING,
        expect=[S.QUEUED],
        actor=actor,
        owner=owner,
        lease_s=lease,
        provenance=Provenance(worker_host=socket.gethostname()),
        reason="enhancing",
    )
    if not claimed:
        logger.info("job %d: not queued any more (done or claimed elsewhere)", job_id)
        return False
    from enhancer.local import EnhanceFileError, enhance_file

    final = ctx.derived_dir / str(job_id)
    # Per holder: a worker that lost its lease cannot clobber its successor's files.
    partial = ctx.derived_dir / f"{job_id}.{owner.replace(':', '-')}.partial"
    with Heartbeat(jobs, job_id, owner, lease) as beat:
        try:
            enhancer = ctx.enhancer(load_enhancer)
            sources = [ctx.spool_dir / path for path in jobs.source_files(job_id)]
            if not sources:
                raise EnhanceFileError(f"job {job_id} has no stored instances")
            shutil.rmtree(partial, ignore_errors=True)
            kind = OutputKind(ctx.settings.pipeline.output_kind)
            results = [enhance_file(enhancer, path, partial, kind=kind).result for path in sources]
        except EnhanceFileError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            jobs.move(
                job_id, S.FAILED, expect=[S.ENHANCING], actor=actor, owner=owner, reason=str(exc)
            )
            return True
    if beat.lost or not jobs.renew_lease(job_id, owner, lease):
        logger.warning("job %d: lease lost while enhancing; leaving it to its new holder", job_id)
        shutil.rmtree(partial, ignore_errors=True)
        return False
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    first = results[0]
    provenance = Provenance(
        worker_host=socket.gethostname(),
        device=first.device,
        model_name=first.model_name,
        model_version=first.model_version,
        model_sha256=first.model_sha256,
    )
    failed_qc = [r.qc.reason for r in results if not r.qc.passed]
    changes: dict[str, Any] = {
        "output_dir": str(final),
        "qc_passed": not failed_qc,
        "qc_reason": "; ".join(failed_qc) or results[0].qc.reason,
        "send_attempts": 0,
        "first_send_failure_at": None,
        # The send is published below; the reconciler waits this long before doing it again.
        "next_send_at": utcnow() + timedelta(seconds=ctx.settings.pipeline.queued_grace_s),
        "force_send": False,
    }
    if failed_qc:
        reason = f"count-fidelity QC failed, not sent: {changes['qc_reason']}"
        jobs.move(
            job_id,
            S.FAILED,
            expect=[S.ENHANCING],
            actor=actor,
            owner=owner,
            reason=reason,
            provenance=provenance,
            changes=changes,
        )
        return True
    seconds = sum(r.seconds for r in results)
    moved = jobs.move(
        job_id,
        S.ENHANCED,
        expect=[S.ENHANCING],
        actor=actor,
        owner=owner,
        reason=f"enhanced {len(results)} instance(s) in {seconds:.2f} s; QC passed",
        provenance=provenance,
        changes=changes,
    )
    if moved and ctx.settings.delivery.destinations:
        ctx.publisher.send(job_id)
    return moved


def derived_files(output_dir: str | None) -> list[Path]:
    """The derived objects a job wrote, in name order."""
    return sorted(Path(output_dir).glob("*.dcm")) if output_dir else []
