"""The one way hookrules reads a file of the rules directory: rules, libraries, data files.

Whatever path leads to a file (a symlink, a symlinked subdirectory, a ConfigMap's `..data` link), what
is read must be a regular file that resolves inside the rules directory, and no more than its size
limit is ever read:
- a link to /etc/passwd would hand its lines to a rule, so the resolved path must lie in the directory;
- a FIFO blocks open() until a writer comes, /dev/zero never ends: only regular files are read, and
  the file is opened non-blocking so that a FIFO swapped in after the check cannot block either;
- a 2 GB sparse file must not be read to learn that it is too big: fstat first, then read at most
  limit + 1 bytes (the file can grow while it is read).

Decided, not closed:
- a hard link to a file outside the directory is read: a hard link IS that file (there is no path
  to resolve), and making one takes write access to the rules directory, which lets one write any
  rule anyway;
- inside() resolves the path, then open() follows it again: a directory on the way swapped for a
  link in between is followed (O_NOFOLLOW guards the last component only). Swapping a directory in
  the rules directory takes write access to it as well. What is opened is still fstat'ed: only a
  regular file of at most the limit is read.
"""

from __future__ import annotations

import gc
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: the largest rule or library file: parsing it (ast.parse) is one C call that holds the GIL, and every
#: broker call with it, for about 2 us a byte of dense code on a busy machine: 64 KiB stays near 130 ms
MAX_RULE_BYTES = 64 * 1024
RULE_SIZE_HINT = "split it: shared code into libraries (load()), tables into data files"

_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NOFOLLOW", 0)
          | getattr(os, "O_CLOEXEC", 0))
_CHUNK = 1024 * 1024


class FileRefused(Exception):
    """A file hookrules will not read; `reason` and `hint` are for the author (errors.RuleError)."""

    def __init__(self, reason: str, hint: str):
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def inside(root: Path | str, path: Path | str) -> str:
    """The resolved path of `path`, when it lies inside the resolved `root`; FileRefused otherwise.
    FileNotFoundError when it resolves to nothing (a dangling link is a missing file)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real == real_root or os.path.commonpath([real_root, real]) != real_root:
        raise FileRefused("it resolves outside the rules directory (a symbolic link?)",
                          "hookrules reads only files inside the rules directory: copy the file in")
    return real


def read_file(root: Path | str, path: Path | str, limit: int,
              size_hint: str = "split it, or trim it") -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file inside `root`, and its fstat; raises FileRefused (not a file hookrules
    reads, or over `limit` bytes) or OSError (cannot read it; FileNotFoundError: it is gone)."""
    real = inside(root, path)
    # stat first: opening a socket fails (ENXIO, "No such device or address") before fstat could say
    # what it is, and a FIFO or device is better not opened at all
    mode = os.stat(real).st_mode
    if not stat.S_ISREG(mode):
        raise FileRefused(f"it is {_kind(mode)}; only regular files are read", "replace it with a regular file")
    fd = os.open(real, _FLAGS)  # O_NOFOLLOW: swapped for a link since it resolved: ELOOP, an OSError
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"it is {_kind(st.st_mode)}; only regular files are read",
                              "replace it with a regular file")
        if st.st_size > limit:
            raise FileRefused(f"file is over {_size(limit)}", size_hint)
        chunks: list[bytes] = []
        left = limit + 1  # one byte more than allowed: it grew while being read
        while left > 0:
            chunk = os.read(fd, min(left, _CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise FileRefused(f"file is over {_size(limit)}", size_hint)
        return b"".join(chunks), st
    finally:
        os.close(fd)


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic garbage collection while one file loads or compiles, then a collection of the
    young generations here, in the thread that loaded it.

    Loading builds millions of short-lived objects (YAML's events, syntax trees), and the collector's
    automatic passes over them, each one C call holding the GIL, took up to 0.9 s for a 2 MB YAML file:
    every broker call waited. But paused for a whole scan, every object the scan allocated sat in the
    youngest generation, and the first collection after it (on the event loop, 0.5 s) walked them all;
    the garbage cycles of every compile piled up meanwhile (1.2 GB for ten rules loading one big
    library). So: paused per file, and what that file left is collected at once, here: a pass over
    one file's objects (bounded by the size limits), not the scan's."""
    if not gc.isenabled():
        yield  # an outer pause (a data file read inside a scan's): it collects when it ends
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect(1)
