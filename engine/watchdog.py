"""The last resort: a process of its own that ends the server when one rule run holds it too long.

The sandbox bounds the cost of every step it knows of, and the deadline is checked between steps.
But one C call the guards did not foresee (a comparison or a hash walking a structure much bigger
than it looks) cannot be interrupted from Python: the event loop, and every other thread (the GIL),
wait for it, and every broker call with them. asteval's own safety notes say it: a hard kill needs
another process. This is that process. The server writes when its current rule run started (and for
which hook) into a shared page; past --hard-timeout the watchdog logs the hook and kills the server
with SIGKILL, so its supervisor (systemd, Docker, Kubernetes) starts it again. Meanwhile each broker
applies its failure handling to the calls that fail (EMQX's failed_action, VerneMQ's next plugin).
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import time

from .hooks import HOOKS
from .scratch import memory_file

_HOOKS = list(HOOKS)
_INDEX = {name: i for i, name in enumerate(_HOOKS)}
#: four doubles: when the current rule run started (0: none running) and its hook's index, then the same
#: for the current compile's library top levels. Two slots: runs happen on the event loop while a scan
#: compiles in a worker thread, and either can hold the GIL, so either can hold the server.
_PAGE = 32
#: how often the watchdog looks, as a share of the limit (and never less often than every 0.5 s)
_POLL_SHARE = 0.1


class RunClock:
    """The server's side: two stores per rule run into the shared page (about 100 ns)."""

    def __init__(self, page: mmap.mmap, *, _twin: RunClock | None = None):
        self._page = page
        self._view: "memoryview[float]" = memoryview(page).cast("d") if _twin is None else _twin._view
        #: a shadow rule's run (shadow.py) writes its hook's index i as -2 - i, so the watchdog names it
        self._shadow = _twin is not None
        self._owner = _twin is None

    def shadow(self) -> RunClock:
        """The same clock for the shadow rules' runs and compiles: they hold the server as a live run
        does, and the watchdog's line says it was a shadow rule. Closed with this one."""
        return RunClock(self._page, _twin=self)

    def started(self, hook: str) -> None:
        view = self._view
        view[1] = self._index(hook)
        view[0] = time.monotonic()  # CLOCK_MONOTONIC: the same clock in both processes

    def _index(self, hook: str) -> int:
        index = _INDEX.get(hook, -1)
        return -2 - index if self._shadow and index >= 0 else index

    def finished(self) -> None:
        self._view[0] = 0.0

    def compile_started(self, hook: str, spent: float = 0.0) -> None:
        """A library top level of a rule of this hook starts running, after `spent` seconds of its
        compile's earlier ones: the runs of one compile are one stretch, and reading and checking
        files between them (the scan thread's own work, which holds no call for long) are not in it.
        From the scan's worker thread, which a SIGHUP can outlive the clock in: a closed clock is no error."""
        try:
            view = self._view
            view[3] = self._index(hook)
            view[2] = time.monotonic() - spent
        except ValueError:  # released by close(): the watchdog was restarted meanwhile
            pass

    def compile_finished(self) -> None:
        try:
            self._view[2] = 0.0
        except ValueError:
            pass

    def close(self) -> None:
        if self._owner:
            self._view.release()
            self._page.close()


class Watchdog:
    def __init__(self, limit: float, what: str = "the server"):
        """`what` the watchdog kills, for its log line: the server, or a `hookrules test` run."""
        self.limit = limit = float(limit)
        fd = memory_file("hookrules-watchdog")  # memory, so a read-only root is no obstacle
        try:
            os.ftruncate(fd, _PAGE)
            page = mmap.mmap(fd, _PAGE)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hookrules.watchdog", str(os.getpid()), str(fd), repr(limit), what],
                pass_fds=[fd], stdin=subprocess.DEVNULL)
        finally:
            os.close(fd)
        self.clock = RunClock(page)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.clock.close()


def watch(server: int, fd: int, limit: float, what: str = "the server") -> int:
    """The watchdog process: returns when the server is gone, or after killing it."""
    page = mmap.mmap(fd, _PAGE)
    view = memoryview(page).cast("d")
    poll = min(max(limit * _POLL_SHARE, 0.01), 0.5)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the server's to handle
    while os.getppid() == server:
        time.sleep(poll)
        now = time.monotonic()
        for slot in (0, 2):
            started = view[slot]
            if not started or now - started <= limit:
                continue
            index = int(view[slot + 1])
            shadow = index <= -2
            if shadow:  # a shadow rule's (RunClock.shadow)
                index = -2 - index
            hook = _HOOKS[index] if 0 <= index < len(_HOOKS) else ""
            which = "shadow " if shadow else ""
            if slot == 0:
                running = f"a run of the {hook} {which}rule" if hook else f"a {which}rule run"
                fix = (f"Fix the {which}rule: 'hookrules eval {hook}{' --rules SHADOW_DIR' if shadow else ''}' runs it "
                       "alone." if hook else f"Fix the {which}rule.")
            else:
                running = (f"loading the libraries of the {hook} {which}rule" if hook
                           else f"loading {which}libraries")
                fix = f"Fix the library: 'hookrules check{' SHADOW_DIR' if shadow else ''}' loads it alone."
            print(f"hookrules: watchdog: {running} has held {what} for over {limit:g} s "
                  f"(--hard-timeout) in one step the sandbox could not interrupt; killing {what} (SIGKILL)"
                  + (" so that its supervisor restarts it" if what == "the server" else "")
                  + f". {fix}", file=sys.stderr, flush=True)
            os.kill(server, signal.SIGKILL)
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:5]))
