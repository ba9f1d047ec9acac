"""Durable spool of received objects, laid out as ``Study/Series/SOP.<sha>.dcm``.

A file is durable once its bytes are fsynced, it has been linked (or, over a crash's
leftover, renamed) into place on the same filesystem, atomically, and the directory entry
itself is fsynced. The node commits an audit row, and so acknowledges a C-STORE, only
after all three.

To keep the C-STORE round trip short, the fsyncs run on helper threads (they release the
GIL) while the handler parses the header; the audit commit waits for them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pacs_node.receiver.received_file import ReceivedDigest, fsync_and_close

logger = logging.getLogger(__name__)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CHUNK = 1 << 20
#: New series directories remembered until their parents' fsync is seen done.
_NEW_DIRS_KEPT = 64


def is_path_safe_uid(uid: str) -> bool:
    """A UID that is safe as a path component: digits and dots only, 64 chars max (PS3.5 9.1)."""
    return 0 < len(uid) <= 64 and bool(_UID_RE.match(uid))


@dataclass(frozen=True)
class SealedFile:
    """A received file: its digest and size."""

    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Sealing:
    """Work started on a received file: its digest, and the fsync of its bytes."""

    digest: Future[SealedFile]
    synced: Future[None]


@dataclass(frozen=True)
class Placement:
    """A file put into the spool; :meth:`wait_durable` returns once nothing can undo it."""

    relative: str
    _pending: tuple[Future[None], ...]

    def wait_durable(self) -> None:
        for future in self._pending:
            future.result()


def _digest(path: Path, fd: int) -> SealedFile:
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return SealedFile(path, digest.hexdigest(), size)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_parents(series_dir: Path) -> None:
    """Make a new series directory, and a study directory made with it, durable."""
    _fsync_dir(series_dir.parent)
    _fsync_dir(series_dir.parent.parent)


def _succeeded(future: Future[None]) -> bool:
    return future.done() and future.exception() is None


class Spool:
    """Places received files under ``root``; temporary files live in ``incoming``."""

    def __init__(self, root: Path, incoming: Path, *, io_threads: int = 8) -> None:
        self.root = root
        self.incoming = incoming
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="spool-io")
        self._dirs_lock = threading.Lock()
        self._new_dirs: dict[Path, Future[None]] = {}

    def prepare(self) -> None:
        """Create the directories and refuse an ``incoming`` on another filesystem."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        if os.stat(self.root).st_dev != os.stat(self.incoming).st_dev:
            raise OSError(
                f"{self.incoming} and {self.root} are on different filesystems; "
                "received files could not be linked into the spool"
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

    def start_seal(self, path: Path, received: ReceivedDigest | None = None) -> Sealing:
        """Start fsyncing ``path`` on a helper thread, unless ``received`` says its fsync
        has started, and hashing it on another unless ``received`` holds its digest."""
        if received is not None:
            digest: Future[SealedFile] = Future()
            digest.set_result(SealedFile(path, received.sha256, received.size))
            synced = received.synced
            if synced is None:
                synced = self._io.submit(fsync_and_close, os.open(path, os.O_RDONLY))
            return Sealing(digest=digest, synced=synced)
        # Opened here, not on the helper threads: pynetdicom may delete the temporary name
        # (after a refusal) before they run.
        fd = os.open(path, os.O_RDONLY)
        try:
            dup = os.dup(fd)
        except OSError:
            os.close(fd)
            raise
        return Sealing(
            digest=self._io.submit(_digest, path, fd), synced=self._io.submit(fsync_and_close, dup)
        )

    @staticmethod
    def relative_path(study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
        """Where an object lives, relative to the spool root. The digest keeps versions apart."""
        for uid in (study_uid, series_uid, sop_uid):
            if not is_path_safe_uid(uid):
                raise ValueError(f"UID {uid!r} is not a valid UID")
        return f"{study_uid}/{series_uid}/{sop_uid}.{sha256[:16]}.dcm"

    def _series_dir(self, relative: str) -> tuple[Path, tuple[Future[None], ...]]:
        """The directory ``relative`` goes in, created if need be, and the fsync of its
        parents when that may still be running.

        A new directory must be durable in its parents too; those fsyncs run on a helper
        thread, beside the file's own, and every placement into the directory waits for
        them until they are done, not only the one that created it.
        """
        series_dir = (self.root / relative).parent
        # Under the lock, so no thread finds the directory made but not yet registered.
        with self._dirs_lock:
            parents_synced = self._new_dirs.get(series_dir)
            if parents_synced is not None and parents_synced.done():
                del self._new_dirs[series_dir]
                # One that failed is tried again; the placements that waited on it failed.
                parents_synced = (
                    None if _succeeded(parents_synced) else self._sync_parents(series_dir)
                )
            elif parents_synced is None and not os.path.isdir(series_dir):
                series_dir.mkdir(parents=True, exist_ok=True)
                parents_synced = self._sync_parents(series_dir)
        return series_dir, () if parents_synced is None else (parents_synced,)

    def _sync_parents(self, series_dir: Path) -> Future[None]:
        """Start the parents' fsync of ``series_dir`` and remember it; holds ``_dirs_lock``."""
        if len(self._new_dirs) >= _NEW_DIRS_KEPT:
            for done in [d for d, f in self._new_dirs.items() if _succeeded(f)]:
                del self._new_dirs[done]
        future = self._new_dirs[series_dir] = self._io.submit(_fsync_parents, series_dir)
        return future

    def place_new(
        self, sealed: SealedFile, relative: str, synced: Future[None]
    ) -> Placement | None:
        """Link ``sealed`` into the spool at ``relative`` unless something is already there.

        A hard link never replaces anything, so this may run before the audit DB says
        whether the bytes are new; the directory is fsynced meanwhile. ``synced`` is the
        fsync of the file's bytes. Returns None when ``relative`` exists.
        """
        series_dir, parents = self._series_dir(relative)
        try:
            os.link(sealed.path, self.root / relative)
        except FileExistsError:
            return None
        return Placement(relative, (synced, self._io.submit(_fsync_dir, series_dir), *parents))

    def replace(self, sealed: SealedFile, relative: str, synced: Future[None]) -> Placement:
        """Put ``sealed`` at ``relative`` over an unrecorded file (left by a crash).

        The new bytes are on disk before they replace anything.
        """
        series_dir, parents = self._series_dir(relative)
        synced.result()
        os.replace(sealed.path, self.root / relative)
        return Placement(relative, (self._io.submit(_fsync_dir, series_dir), *parents))
