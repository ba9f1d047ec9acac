"""`pacs-node jobs retry|force-send|resend`: admin moves, logged, refused when senseless."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nodeharness import PACS_NODE
from sqlalchemy import select
from test_audit_store import one_complete_series

from pacs_node.audit.db import make_engine, upgrade
from pacs_node.audit.job_store import JobStore
from pacs_node.audit.models import JobState, JobStateChange
from pacs_node.audit.store import AuditStore

S = JobState
STUDY = "1.2.3"  # the study of test_audit_store.facts()


def jobs_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PACS_NODE, "jobs", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def setup(tmp_path: Path) -> tuple[Path, JobStore, int]:
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    config = tmp_path / "node.toml"
    config.write_text(f'[audit]\ndatabase_url = "{url}"\n[storage]\ndata_dir = "{tmp_path}"\n')
    upgrade(url)
    engine = make_engine(url)
    audit = AuditStore(engine)
    series = one_complete_series(audit)
    job = audit.create_job(series.series_id, S.PENDING, rule_name="r", reason="new", actor="t")
    assert job is not None
    return config, JobStore(engine), job


def walk_to(jobs: JobStore, job: int, final: S, **changes: object) -> None:
    """pending → queued → enhancing → (enhanced →) final, as the pipeline would."""
    jobs.move(job, S.QUEUED, expect=[S.PENDING], actor="t")
    jobs.move(job, S.ENHANCING, expect=[S.QUEUED], actor="w", owner="w", lease_s=60)
    if final is S.FAILED:
        jobs.move(job, S.FAILED, expect=[S.ENHANCING], actor="w", owner="w", changes=changes)
        return
    jobs.move(job, S.ENHANCED, expect=[S.ENHANCING], actor="w", owner="w", changes=changes)
    jobs.move(job, S.SENDING, expect=[S.ENHANCED], actor="s", owner="s", lease_s=60)
    jobs.move(job, final, expect=[S.SENDING], actor="s", owner="s")


def test_force_send_moves_a_qc_failure_on_and_retry_reruns_it(tmp_path: Path) -> None:
    config, jobs, job = setup(tmp_path)
    walk_to(jobs, job, S.FAILED, qc_passed=False, qc_reason="total 1.12x", output_dir="/d/1")
    done = jobs_cli(config, "force-send", str(job))
    assert done.returncode == 0, done.stderr
    row = jobs.get(job)
    assert (row.state, row.force_send) == (S.ENHANCED, True)
    with jobs.engine.connect() as conn:
        actor, reason = conn.execute(
            select(JobStateChange.actor, JobStateChange.reason).order_by(JobStateChange.id.desc())
        ).first() or ("", "")
    assert actor == "admin" and "total 1.12x" in reason
    # A job that did not fail QC has nothing to force; retry re-runs a failed job.
    again = jobs_cli(config, "force-send", str(job))
    assert again.returncode == 2 and "Traceback" not in again.stderr
    jobs.move(job, S.FAILED, expect=[S.ENHANCED], actor="t", changes={"qc_passed": True})
    assert jobs_cli(config, "retry", str(job)).returncode == 0
    assert jobs.get(job).state == S.PENDING


def test_resend_puts_a_studys_sent_jobs_back_to_enhanced(tmp_path: Path) -> None:
    config, jobs, job = setup(tmp_path)
    walk_to(jobs, job, S.SENT, qc_passed=True, output_dir="/d/1")
    done = jobs_cli(config, "resend", "--study", STUDY)
    assert done.returncode == 0, done.stderr
    assert f"jobs {job}" in done.stdout
    row = jobs.get(job)
    assert (row.state, row.send_attempts, row.next_send_at) == (S.ENHANCED, 0, None)
    nothing = jobs_cli(config, "resend", "--study", "9.9.9")
    assert nothing.returncode == 2
    assert "study 9.9.9: no sent or failed job" in nothing.stderr


def test_bad_requests_are_one_line_errors(tmp_path: Path) -> None:
    config, _, job = setup(tmp_path)
    pending = jobs_cli(config, "retry", str(job))
    assert pending.returncode == 2
    assert f"job {job} is pending, not failed or ignored" in pending.stderr
    missing = jobs_cli(config, "retry", "99")
    assert missing.returncode == 2 and "no job 99" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_enhance_processes_share_the_cores_and_the_model_loader_applies_it(
    tmp_path: Path, keeping_model: Path
) -> None:
    from pacs_node.cli_jobs import torch_threads_per_process

    assert torch_threads_per_process(16, 4) == 4
    assert torch_threads_per_process(2, 2) == 1
    assert torch_threads_per_process(2, 4) == 1  # never zero
    # In a fresh process, as a worker child would: the loader sets torch's thread count.
    script = (
        "import torch\n"
        "from pacs_node.config import load_settings\n"
        "from pacs_node.pipeline.enhance_service import load_enhancer\n"
        "settings = load_settings(None, pipeline={'torch_threads': 1, 'device': 'cpu',"
        f" 'checkpoint': {str(keeping_model)!r}}})\n"
        "load_enhancer(settings)\n"
        "print(torch.get_num_threads())\n"
    )
    done = subprocess.run(
        [PACS_NODE[0], "-c", script], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "1"
