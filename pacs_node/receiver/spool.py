"""Durable spool of received objects, laid out as ``Study/Series/SOP.<sha>.dcm``.

A file is durable once its bytes are fsynced, it has been renamed into place on the same
filesystem (atomic), and the directory entry itself is fsynced.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CHUNK = 1 << 20


def is_path_safe_uid(uid: str) -> bool:
    """A UID that is safe as a path component: digits and dots only, 64 chars max (PS3.5 9.1)."""
    return 0 < len(uid) <= 64 and bool(_UID_RE.match(uid))


@dataclass(frozen=True)
class SealedFile:
    """A received file whose bytes are on disk (fsynced): its digest and size."""

    path: Path
    sha256: str
    size: int


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: Path) -> SealedFile:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return SealedFile(path, digest.hexdigest(), size)


def _digest_after(path: Path, synced: Future[None]) -> SealedFile:
    sealed = _digest(path)
    synced.result()
    return sealed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Places received files under ``root``; temporary files live in ``incoming``."""

    def __init__(self, root: Path, incoming: Path, *, sync_threads: int = 8) -> None:
        self.root = root
        self.incoming = incoming
        self._workers = ThreadPoolExecutor(sync_threads, thread_name_prefix="spool-seal")

    def prepare(self) -> None:
        """Create the directories and refuse an ``incoming`` on another filesystem."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        if os.stat(self.root).st_dev != os.stat(self.incoming).st_dev:
            raise OSError(
                f"{self.incoming} and {self.root} are on different filesystems; "
                "the move into the spool would not be an atomic rename"
            )

    def clear_incoming(self) -> int:
        """Delete temporary files left by a crash: none of them was ever acknowledged."""
        removed = 0
        for leftover in self.incoming.iterdir():
            if leftover.is_file():
                leftover.unlink()
                removed += 1
        return removed

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def start_seal(self, path: Path) -> Future[SealedFile]:
        """Hash and fsync ``path`` on helper threads while the caller parses the header.

        Both release the GIL, so they overlap with the parse and with each other.
        """
        synced = self._workers.submit(_fsync_file, path)
        return self._workers.submit(_digest_after, path, synced)

    @staticmethod
    def relative_path(study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
        """Where an object lives, relative to the spool root. The digest keeps versions apart."""
        for uid in (study_uid, series_uid, sop_uid):
            if not is_path_safe_uid(uid):
                raise ValueError(f"UID {uid!r} is not a valid UID")
        return f"{study_uid}/{series_uid}/{sop_uid}.{sha256[:16]}.dcm"

    def place(self, sealed: SealedFile, relative: str) -> Path:
        """Rename ``sealed`` into the spool at ``relative`` and fsync the directories."""
        target = self.root / relative
        series_dir = target.parent
        if not series_dir.is_dir():
            series_dir.mkdir(parents=True, exist_ok=True)
            # New directories must be durable in their parents too.
            _fsync_dir(series_dir.parent)
            _fsync_dir(series_dir.parent.parent)
        os.replace(sealed.path, target)
        _fsync_dir(series_dir)
        return target

    def discard(self, relative: str) -> None:
        (self.root / relative).unlink(missing_ok=True)
