"""Shared fixtures: audit databases (SQLite and PostgreSQL), nodes, synthetic scans."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pydicom
import pytest
from models import write_tiny_checkpoint
from nodeharness import Node, free_port, write_config
from sqlalchemy import Engine

from pacs_node.audit.db import make_engine, upgrade
from pacs_node.derived import ModelProvenance, OutputKind, build_derived_series, write_series
from pacs_node.synth import write_synthetic_scans


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run wherever CUDA is present and are skipped elsewhere."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/{name}"


@pytest.fixture
def strict_reading() -> Iterator[None]:
    """Read what we write the way highdicom does: invalid values raise."""
    settings = pydicom.config.settings
    before = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.RAISE
    try:
        yield
    finally:
        settings.reading_validation_mode = before


def _postgres_database() -> Iterator[str]:
    name = f"pacs_node_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.format(name=name)
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty audit database of each supported kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An audit database migrated from empty to head with Alembic."""
    upgrade(database_url)
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


NodeFactory = Callable[..., Node]


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[NodeFactory]:
    """Build (not start) nodes with a config file; all are stopped at teardown."""
    nodes: list[Node] = []

    def build(
        sections: dict[str, dict[str, Any]] | None = None,
        rules: list[dict[str, Any]] | None = None,
        name: str = "node",
    ) -> Node:
        base = tmp_path / name
        port = free_port()
        merged: dict[str, dict[str, Any]] = {
            "node": {"host": "127.0.0.1", "port": port, "receiver_processes": 2},
            "storage": {"data_dir": base / "data", "min_free_disk_mb": 1},
            "completion": {"quiet_period_s": 1.0, "poll_interval_s": 0.2},
            "timeouts": {"connection_idle": 5.0, "acse": 10.0},
            # Receiver tests stop at the job row; pipeline tests turn this on.
            "pipeline": {"enabled": False},
        }
        for section, values in (sections or {}).items():
            merged[section] = {**merged.get(section, {}), **values}
        base.mkdir(parents=True, exist_ok=True)
        config = write_config(base / "pacs-node.toml", merged, rules or [])
        node = Node(
            config=config,
            port=int(merged["node"]["port"]),
            data_dir=Path(merged["storage"]["data_dir"]),
            log=base / "node.log",
            ae_title=str(merged["node"].get("ae_title", "PACS_NODE")),
        )
        nodes.append(node)
        return node

    yield build
    for node in nodes:
        node.stop()


# Pipeline tests: tiny models built in code and one synthetic rapid scan.


@pytest.fixture(scope="session")
def keeping_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny cascade with zero weights: the identity in VST units, so QC passes."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "keep.safetensors", scale=0.0)


@pytest.fixture(scope="session")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny cascade with random weights: it adds ~12 % counts, so QC fails."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "random.safetensors")


@pytest.fixture(scope="session")
def rapid_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    [scan] = write_synthetic_scans(
        tmp_path_factory.mktemp("scan"), count=1, seed=21, speed_cm_min=40
    )
    return scan


@pytest.fixture(scope="session")
def derived_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A derived series of each SC kind (pixels: twice a rapid scan), ready to send."""
    work = tmp_path_factory.mktemp("derived")
    [scan] = write_synthetic_scans(work / "in", count=1, seed=11, speed_cm_min=40)
    source = pydicom.dcmread(scan)
    enhanced = (source.pixel_array.astype(np.uint32) * 2).clip(0, 65535).astype(np.uint16)
    model = ModelProvenance(
        name="cascade-small", version="0.1.0", sha256="cd34" * 16, profile="fast"
    )
    files = []
    for kind in (OutputKind.MULTIFRAME_SC, OutputKind.SINGLE_FRAME_SC):
        files += write_series(build_derived_series(source, enhanced, model, kind=kind), work / kind)
    return files
