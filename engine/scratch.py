"""Scratch files that live in memory, so the server writes nothing to any file system while it runs.

Why: the container image runs with a read-only root and no writable /tmp (Docker's `--read-only`, Kubernetes'
readOnlyRootFilesystem), and a rules directory may be mounted read-only too. Two things need a file all the
same: the watchdog's page shared with the server (a file descriptor both processes map) and the descriptor set
grpcio-tools' protoc writes at start-up (it only writes to a path). On Linux both get a memfd, which is memory
with a file descriptor and, through /proc/self/fd, a path; elsewhere a temporary file, as before.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def memory_file(name: str) -> int:
    """A new, empty, read-write file descriptor no other process can open by a name: memfd on Linux, else a
    temporary file removed at once. The caller closes it."""
    try:
        return os.memfd_create(name)
    except (AttributeError, OSError):
        fd, path = tempfile.mkstemp(prefix=f"{name}-")
        os.unlink(path)
        return fd


@contextlib.contextmanager
def scratch_path(name: str) -> Iterator[Path]:
    """A path a tool may write a file to (open, truncate, write) and the caller then read, gone on exit.

    On Linux it is /proc/self/fd/N of a memfd: opening it opens the same memory, so nothing reaches a file
    system. Where that does not work (no memfd, no /proc), a file in a temporary directory."""
    fd = -1
    try:
        fd = os.memfd_create(name)
    except (AttributeError, OSError):
        pass
    if fd >= 0:
        try:
            path = Path(f"/proc/self/fd/{fd}")
            if path.exists():
                yield path
                return
        finally:
            os.close(fd)
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        yield Path(tmp) / name
