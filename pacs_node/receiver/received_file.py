"""The temporary file a C-STORE data set is written to, hashed and its head kept as it arrives.

pynetdicom writes each fragment of a data set to a ``NamedTemporaryFile`` on its DUL thread.
Hashing each fragment as it is written (on a helper thread: hashlib releases the GIL, so the
DUL thread goes back to its socket at once), and keeping the first bytes for the header
parse, takes both off the C-STORE round trip: the handler no longer reads the file back
once the last fragment is in. The file's fsync starts as soon as that last fragment is
written (:meth:`ReceivedFile.start_sync`, called on the DUL thread), so it runs while the
message is decoded and handed to its handler instead of after.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

#: How much of the file's start is kept in memory for the header parse.
HEAD_BYTES = 256 * 1024

logger = logging.getLogger(__name__)


class _Hasher:
    """One thread that hashes the fragments of every file of the process, in the order
    they were written. A plain queue of calls: a ThreadPoolExecutor's Future and locks per
    fragment cost the DUL thread more than the hashing it hands over."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[Any], object], Any]] = queue.SimpleQueue()
        self._started = False
        self._start_lock = threading.Lock()

    def put(self, call: Callable[[Any], object], argument: Any) -> None:
        if not self._started:
            self._start()
        self._calls.put((call, argument))

    def wait(self) -> None:
        """Return once every call put before this one has run."""
        done = threading.Event()
        self.put(lambda _: done.set(), None)
        done.wait()

    def _start(self) -> None:
        with self._start_lock:
            if not self._started:
                threading.Thread(target=self._run, name="received-sha256", daemon=True).start()
                self._started = True

    def _run(self) -> None:
        while True:
            call, argument = self._calls.get()
            try:
                call(argument)
            except Exception:  # never the thread's end: every wait() would hang
                logger.exception("hashing a received fragment failed")


_HASHER = _Hasher()
# fsync releases the GIL; two threads let two associations' files be flushed at once.
_SYNCER = ThreadPoolExecutor(2, thread_name_prefix="received-fsync")


def fsync_and_close(fd: int) -> None:
    """fsync ``fd`` and close it, also when the fsync fails."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ReceivedDigest:
    """What was learnt from a file's bytes while they were written."""

    sha256: str
    size: int
    head: bytes  #: the first HEAD_BYTES bytes (all of them for a smaller file)
    #: The fsync of every byte written, when :meth:`ReceivedFile.start_sync` started one.
    synced: Future[None] | None = None


class ReceivedFile:
    """Wraps pynetdicom's temporary file (``name``, ``write``, ``file.flush``, ``close``).

    The bytes written before wrapping (the preamble and File Meta Information pynetdicom
    writes first) are read back once; every later ``write`` is hashed as it passes.
    """

    def __init__(self, wrapped: IO[bytes] | Any) -> None:
        wrapped.flush()
        self._wrapped = wrapped
        # The open file itself, not the NamedTemporaryFile wrapper whose every attribute
        # is looked up through __getattr__.
        self._buffered: Any = getattr(wrapped, "file", wrapped)
        self.name: str = wrapped.name
        self.file = self  # pynetdicom calls ``.file.flush()`` after every fragment
        self._sha256 = hashlib.sha256()
        self._head = bytearray()
        self._size = 0
        self._synced: Future[None] | None = None
        self._hashed: tuple[str, int, bytes] | None = None  # sha256, size, head once complete
        with open(self.name, "rb") as f:
            self._take(f.read())

    def _take(self, data: bytes | memoryview) -> None:
        # ``data`` is never written to again: a bytes object of its own (pynetdicom slices
        # each fragment) or a view into the buffer its PDU alone was read into.
        _HASHER.put(self._sha256.update, data)
        self._size += len(data)
        room = HEAD_BYTES - len(self._head)
        if room > 0:
            self._head += data[:room]

    def write(self, data: bytes | memoryview) -> int:
        written: int = self._buffered.write(data)
        self._take(data)
        return written

    def flush(self) -> None:
        self._buffered.flush()

    def close(self) -> None:
        self._wrapped.close()

    def start_sync(self) -> None:
        """Start the fsync of everything written so far; call once the data set is complete.

        The fsync runs on its own descriptor: pynetdicom closes the file after the handler,
        which may answer (a refusal) without waiting for it.
        """
        try:
            self._buffered.flush()
            fd = os.dup(self._wrapped.fileno())
        except OSError:
            return  # out of descriptors, say: the handler's own fsync then covers the file
        self._synced = _SYNCER.submit(fsync_and_close, fd)

    def digest(self) -> ReceivedDigest:
        """The digest of the whole data set; call once it is complete (the first call
        fixes the result, so later ones may come after the file is closed)."""
        if self._hashed is None:
            self._buffered.flush()
            _HASHER.wait()
            self._hashed = (self._sha256.hexdigest(), self._size, bytes(self._head))
        return ReceivedDigest(*self._hashed, synced=self._synced)
