"""The pacs-node command line: serve, db, audit, synth; errors in one line."""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NodeFactory
from nodeharness import DCMTK_ENV, PACS_NODE, Node, free_port, storescu, wait_for
from pydicom import dcmread
from scans import series_files

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PACS_NODE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_pacs_node_package_never_imports_torch() -> None:
    # Module-level imports only: `pacs-node enhance` imports the enhancer inside its command.
    offenders = []
    for path in (ROOT / "pacs_node").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path}: {n}" for n in names if n.split(".")[0] in ("torch", "enhancer")]
    assert offenders == []
    code = (
        "import sys, pacs_node.cli, pacs_node.serve, pacs_node.synth, pacs_node.pipeline.tasks, "
        "pacs_node.pipeline.enhance_service, pacs_node.pipeline.send_service; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False"


def test_synth_writes_scans_that_dciodvfy_accepts(tmp_path: Path) -> None:
    result = run("synth", str(tmp_path / "out"), "--count", "2", "--seed", "7", "--speed", "40")
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "out").glob("*.dcm"))
    assert len(files) == 2
    for path in files:
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        report = check.stdout + check.stderr
        assert "NMImage" in report
        assert not [line for line in report.splitlines() if line.startswith("Error")], report
        ds = dcmread(path)
        assert ds.Modality == "NM"
        assert ds.NumberOfFrames == 2


def test_synth_rejects_a_bad_speed_without_a_traceback(tmp_path: Path) -> None:
    result = run("synth", str(tmp_path), "--speed", "30")
    assert result.returncode == 2
    assert "invalid choice: 30" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_then_current_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[audit]\ndatabase_url = "{postgres_url}"\n')
    upgraded = run("db", "upgrade", "--config", str(config))
    assert upgraded.returncode == 0, upgraded.stderr
    assert "revision 0003" in upgraded.stdout
    assert "revision 0003" in run("db", "current", "--config", str(config)).stdout


def test_db_errors_name_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[audit]\ndatabase_url = "postgresql://nobody@127.0.0.1:1/none"\n')
    result = run("db", "upgrade", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith("pacs-node: audit database: OperationalError")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_audit_views_as_table_and_json(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory()
    node.start()
    files = series_files(tmp_path / "send", 2)
    assert storescu(node, *files).returncode == 0
    jobs = wait_for(lambda: node.audit("jobs"), 15)

    instances = node.audit("instances")
    assert {"sop_instance_uid", "series_instance_uid", "study_instance_uid", "state"} <= set(
        instances[0]
    )
    assert jobs[0]["state"] == "pending"
    assert set(jobs[0]) >= {"series_instance_uid", "state", "rule_name", "reason", "created_at"}
    table = node.cli("audit", "associations").stdout
    assert table.splitlines()[0].split()[:3] == ["id", "started_at", "calling_ae"]
    assert "GAMMA_CAM" in table and "released" in table and "(1 rows)" in table

    assert node.audit("jobs", "--state", "ignored") == []
    assert node.audit("instances", "--since", "2h") == instances
    assert node.audit("instances", "--since", "2999-01-01T00:00:00") == []
    bad = node.cli("audit", "jobs", "--since", "yesterday", check=False)
    assert bad.returncode == 2
    assert "--since 'yesterday' is neither an ISO 8601 time" in bad.stderr


@pytest.mark.slow
def test_serve_flags_override_the_config_and_a_busy_port_is_a_clear_error(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    data_dir = tmp_path / "elsewhere"
    port = free_port()
    flagged = Node(config=node.config, port=port, data_dir=data_dir, log=tmp_path / "flag.log")
    process = subprocess.Popen(
        [
            *PACS_NODE,
            "serve",
            "--config",
            str(node.config),
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        stdout=flagged.log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    flagged.process = process
    try:
        wait_for(lambda: f"pacs-node listening on 127.0.0.1:{port}" in flagged.log_text(), 60)
        assert (data_dir / "audit.sqlite3").exists()
        echo = subprocess.run(
            ["echoscu", "-aec", "PACS_NODE", "127.0.0.1", str(port)], env=DCMTK_ENV, timeout=30
        )
        assert echo.returncode == 0
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", node.port))
            squatter.listen()
            busy = run("serve", "--config", str(node.config))
        assert busy.returncode == 2
        assert f"cannot start: port {node.port} on 127.0.0.1 is already in use" in busy.stderr
        assert "Traceback" not in busy.stderr
    finally:
        flagged.stop()


def test_cli_json_is_valid_on_an_empty_database(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path}/data"\n')
    assert run("db", "upgrade", "--config", str(config)).returncode == 0
    result = run("audit", "jobs", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    no_schema = tmp_path / "n.toml"
    no_schema.write_text(f'[storage]\ndata_dir = "{tmp_path}/empty"\n')
    missing = run("audit", "jobs", "--config", str(no_schema))
    assert missing.returncode == 2
    assert "has `pacs-node db upgrade` run?" in missing.stderr
