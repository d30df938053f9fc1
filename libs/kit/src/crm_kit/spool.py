"""Local temporary files, bounded: a pod's scratch space is small (the chart mounts it with a size limit), so
every temporary file a service or the gateway writes lives in one declared directory and the process keeps
its use of it under a declared budget.

    CRM_SPOOL_DIR        the directory (the chart mounts an emptyDir with a sizeLimit there); empty: the
                         system's temporary directory (local use). `configure` points Python's `tempfile` at it,
                         so libraries' own temporary files (Starlette's multipart parts, openpyxl's write-only
                         sheets) land there too.
    CRM_SPOOL_MAX_BYTES  what the process may hold there at once (keep it under the mount's sizeLimit).

Who writes a temporary file reserves its size first (`reserve`, or `Reservation.grow` as it writes): an upload
its Content-Length, an import its stored file's size, an XLSX export as its rows come. Past the budget the
caller waits its turn (up to `wait` seconds), then gets a 429 (TooManyRequests, retry later); a single file
larger than the whole budget is refused at once (InvalidArgument). Reservations are released when the file is
gone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator

from crm_kit.errors import InvalidArgument, TooManyRequests

DEFAULT_MAX_BYTES = 1 << 30


class Spool:
    def __init__(self, directory: str = "", max_bytes: int = DEFAULT_MAX_BYTES):
        self.directory = directory or tempfile.gettempdir()
        self.max_bytes = max_bytes
        self.used = 0

    async def _take(self, n: int, wait: float) -> None:
        if n > self.max_bytes:
            raise InvalidArgument(
                f"the file ({n >> 20} MiB) is larger than the {self.max_bytes >> 20} MiB this server holds at once",
                reason="file_too_large",
            )
        deadline = time.monotonic() + wait
        while self.used + n > self.max_bytes:  # one event loop: the check and the take below are one step
            if time.monotonic() >= deadline:
                raise TooManyRequests(
                    "the server is busy with other files; retry in a minute", reason="spool_full"
                )
            await asyncio.sleep(0.1)
        self.used += n

    def _give(self, n: int) -> None:
        self.used -= n

    @contextlib.asynccontextmanager
    async def reserve(self, n: int, *, wait: float = 30.0) -> AsyncIterator[Reservation]:
        """Hold `n` bytes of the budget (more with `grow`) until the block ends."""
        reservation = Reservation(self, wait)
        await reservation.grow(n)
        try:
            yield reservation
        finally:
            self._give(reservation.bytes)


class Reservation:
    def __init__(self, spool: Spool, wait: float):
        self.spool, self.wait, self.bytes = spool, wait, 0

    async def grow(self, n: int) -> None:
        await self.spool._take(n, self.wait)
        self.bytes += n


_current = Spool()


def configure(directory: str, max_bytes: int) -> Spool:
    """The process's spool (done once at start, by the kit's service and the gateway)."""
    global _current
    if directory:
        os.makedirs(directory, exist_ok=True)
        tempfile.tempdir = directory
    if (directory or tempfile.gettempdir()) != _current.directory or max_bytes != _current.max_bytes:
        _current = Spool(directory, max_bytes)
    return _current


def current() -> Spool:
    return _current


def mkstemp(prefix: str, suffix: str = "") -> tuple[int, str]:
    """A temporary file in the spool directory (reserve its size first)."""
    return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=_current.directory)
