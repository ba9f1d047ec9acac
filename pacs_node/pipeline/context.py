"""What a worker process needs, built once per process after the fork (never at import).

The engine is created in the child (a connection pool must not cross a fork) and the model
is loaded on first use, so a prefork parent never touches CUDA.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacs_node.audit.commitment_store import CommitmentStore
from pacs_node.audit.db import make_engine
from pacs_node.audit.job_store import JobStore
from pacs_node.config import DestinationSettings, Settings
from pacs_node.pipeline.celery_app import Publisher
from pacs_node.sender import Destination, RetryPolicy

__all__ = ["WorkerContext", "destination_from_settings"]


def destination_from_settings(item: DestinationSettings) -> Destination:
    """A sender destination, with its TLS context when TLS is on."""
    context = None
    if item.tls:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(item.ca_certificate) if item.ca_certificate else None,
        )
        if item.certificate is not None and item.private_key is not None:
            context.load_cert_chain(str(item.certificate), str(item.private_key))
    return Destination(
        item.name,
        item.ae_title,
        item.host,
        item.port,
        tls=context,
        storage_commitment=item.storage_commitment,
    )


@dataclass
class WorkerContext:
    """Settings-derived parts shared by the tasks of one worker process."""

    settings: Settings
    publisher: Publisher
    jobs: JobStore = field(init=False)
    commitments: CommitmentStore = field(init=False)
    rng: random.Random = field(default_factory=random.Random)
    _enhancer: Any = None

    def __post_init__(self) -> None:
        engine = make_engine(self.settings.database_url)
        self.jobs = JobStore(engine)
        self.commitments = CommitmentStore(engine)

    @property
    def owner(self) -> str:
        """This process as a lease holder: ``host:pid``."""
        return f"{socket.gethostname()}:{os.getpid()}"

    @property
    def spool_dir(self) -> Path:
        return self.settings.storage.spool_dir

    @property
    def derived_dir(self) -> Path:
        return self.settings.storage.data_dir / "derived"

    def retry_policy(self) -> RetryPolicy:
        delivery = self.settings.delivery
        return RetryPolicy(
            initial_delay_s=delivery.initial_backoff_s,
            max_delay_s=delivery.max_backoff_s,
            jitter=delivery.jitter,
            give_up_after_s=delivery.retry_for_hours * 3600.0,
        )

    def destinations(self) -> list[Destination]:
        return [destination_from_settings(d) for d in self.settings.delivery.destinations]

    def enhancer(self, load: Callable[[Settings], Any]) -> Any:
        """The process's one model, loaded by ``load`` on first use."""
        if self._enhancer is None:
            self._enhancer = load(self.settings)
        return self._enhancer
