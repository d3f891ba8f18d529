"""kubelet's AtomicWriter, step for step, in Python: how a ConfigMap (or Secret, projected) volume is laid
out and updated on the node, so tests can put hookrules' rules directory through exactly that.

Ported from kubernetes/kubernetes pkg/volume/util/atomic_writer.go (Write, validatePath, pathsToRemove,
newTimestampDir, writePayloadToDir, createUserVisibleFiles, removeUserVisiblePaths), the current order
of its steps: the new timestamped directory is written whole, `..data_tmp` is made to point at it and
renamed over `..data` (the one atomic step), and only then are the user-visible links created (one per
top-level name: `authenticate.star -> ..data/authenticate.star`, `lib -> ..data/lib` for a key projected
to `lib/who.star` through `items`), the links of names no longer in the payload removed, and the old
timestamped directory deleted. Between those steps a reader sees the moments a real volume shows: a new
key's file inside `..data` with no link yet, a removed key's link dangling.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

DATA_DIR = "..data"
NEW_DATA_DIR = "..data_tmp"
MAX_FILE_NAME = 255
MAX_PATH = 4096


def validate_path(target: str) -> None:
    """validatePath: relative, no `..` element, not starting with `..`, names and whole path bounded."""
    if not target:
        raise ValueError("invalid path: must not be empty")
    if os.path.isabs(target):
        raise ValueError(f"invalid path: must be relative path: {target}")
    if len(target) > MAX_PATH:
        raise ValueError(f"invalid path: must be less than or equal to {MAX_PATH} characters")
    items = target.split("/")
    for item in items:
        if item == "..":
            raise ValueError(f"invalid path: must not contain '..': {target}")
        if len(item) > MAX_FILE_NAME:
            raise ValueError(f"invalid path: filenames must be less than or equal to {MAX_FILE_NAME} characters")
    if items[0].startswith("..") and len(items[0]) > 2:
        raise ValueError(f"invalid path: must not start with '..': {target}")


class AtomicWriter:
    """One volume's target directory. write() takes the payload as kubelet builds it: path -> bytes (a
    ConfigMap key, or an `items` entry's `path`), every file with `mode` (the volume's defaultMode)."""

    def __init__(self, target: Path, mode: int = 0o644):
        if not target.is_dir():
            raise FileNotFoundError(target)
        self.target = target
        self.mode = mode

    def current(self) -> Path | None:
        try:
            return self.target / os.readlink(self.target / DATA_DIR)
        except FileNotFoundError:
            return None

    def write(self, payload: dict[str, str | bytes]) -> bool:
        """Project the payload; False when nothing changed (kubelet then writes nothing, only makes sure
        the user-visible links exist)."""
        clean = {}
        for key, content in payload.items():  # (1)
            validate_path(key)
            clean[os.path.normpath(key)] = content.encode() if isinstance(content, str) else content
        old = self.current()  # (2)
        to_remove: set[str] = set()
        should_write = True
        if old is not None:
            to_remove = self._paths_to_remove(clean, old)  # (3)
            if not self._should_write(clean, old) and not to_remove:  # (4)
                should_write = False
                old = None  # kubernetes#121472: keep the data directory, still ensure the links
        if should_write:
            ts_dir = Path(tempfile.mkdtemp(prefix=time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()),
                                           dir=self.target))  # (5)
            os.chmod(ts_dir, 0o755)
            for rel, content in clean.items():  # (6)
                full = ts_dir / rel
                full.parent.mkdir(parents=True, exist_ok=True)
                full.write_bytes(content)
                os.chmod(full, self.mode)
            new_link = self.target / NEW_DATA_DIR  # (8)
            os.symlink(ts_dir.name, new_link)
            os.rename(new_link, self.target / DATA_DIR)  # (9): the atomic step
        for rel in clean:  # (10)
            name = rel.split("/", 1)[0]
            visible = self.target / name
            if not os.path.islink(visible):
                os.symlink(os.path.join(DATA_DIR, name), visible)
        for rel in to_remove:  # (11): only names in the volume's root are links of their own
            if "/" not in rel:
                os.remove(self.target / rel)
        if old is not None:  # (12)
            shutil.rmtree(old)
        return should_write

    @staticmethod
    def _should_write(payload: dict[str, bytes], old: Path) -> bool:
        for rel, content in payload.items():
            path = old / rel
            if not os.path.lexists(path) or path.read_bytes() != content:
                return True
        return False

    @staticmethod
    def _paths_to_remove(payload: dict[str, bytes], old: Path) -> set[str]:
        present = set()
        for root, dirs, files in os.walk(old):
            for name in dirs + files:
                present.add(os.path.relpath(os.path.join(root, name), old))
        wanted = set()
        for rel in payload:
            while rel:
                wanted.add(rel)
                rel = os.path.dirname(rel)
        return present - wanted
