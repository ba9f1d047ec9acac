"""What `pip install .` ships: a node installed without the source tree must still migrate."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_wheel_carries_the_migrations_and_type_marker(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = tmp_path.glob("pacs_node-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = ROOT / "pacs_node" / "audit" / "migrations"
    expected = {
        f"pacs_node/audit/migrations/{p.relative_to(migrations).as_posix()}"
        for p in migrations.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert expected, "no migration files found in the source tree"
    assert expected <= names, sorted(expected - names)
    assert "pacs_node/py.typed" in names
    assert "pacs_node/cli.py" in names
    # The default model, its card and its evaluation report.
    shipped = ROOT / "enhancer" / "weights"
    weights = {f"enhancer/weights/{p.name}" for p in shipped.iterdir() if p.is_file()}
    assert "enhancer/weights/default.safetensors" in weights
    assert weights <= names, sorted(weights - names)
