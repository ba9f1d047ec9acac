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
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

#: How much of the file's start is kept in memory for the header parse.
HEAD_BYTES = 256 * 1024

# One thread hashes for every file of the process: its single queue keeps each file's
# fragments in the order they were written.
_HASHER = ThreadPoolExecutor(1, thread_name_prefix="received-sha256")
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
        self.name: str = wrapped.name
        self.file = self  # pynetdicom calls ``.file.flush()`` after every fragment
        self._sha256 = hashlib.sha256()
        self._head = bytearray()
        self._size = 0
        self._hashed: Future[None] | None = None
        self._synced: Future[None] | None = None
        with open(self.name, "rb") as f:
            self._take(f.read())

    def _take(self, data: bytes) -> None:
        # ``data`` is a bytes object of its own (pynetdicom slices each fragment), so it
        # cannot change while it waits for the hasher.
        self._hashed = _HASHER.submit(self._sha256.update, data)
        self._size += len(data)
        room = HEAD_BYTES - len(self._head)
        if room > 0:
            self._head += data[:room]

    def write(self, data: bytes) -> int:
        written: int = self._wrapped.write(data)
        self._take(data)
        return written

    def flush(self) -> None:
        self._wrapped.flush()

    def close(self) -> None:
        self._wrapped.close()

    def start_sync(self) -> None:
        """Start the fsync of everything written so far; call once the data set is complete.

        The fsync runs on its own descriptor: pynetdicom closes the file after the handler,
        which may answer (a refusal) without waiting for it.
        """
        try:
            self._wrapped.flush()
            fd = os.dup(self._wrapped.fileno())
        except OSError:
            return  # out of descriptors, say: the handler's own fsync then covers the file
        self._synced = _SYNCER.submit(fsync_and_close, fd)

    def digest(self) -> ReceivedDigest:
        """The digest of everything written so far; call once the data set is complete."""
        self._wrapped.flush()
        if self._hashed is not None:
            self._hashed.result()
        return ReceivedDigest(
            self._sha256.hexdigest(), self._size, bytes(self._head), synced=self._synced
        )
