"""Hot reload: watchdog reports changes in the rules directory, a worker thread rescans, the loop swaps.

Why it looks like this (see ../shared/reference/sandbox-and-libraries.md section 4):
- the directory is watched, not the files, so temp-file renames, vim's rename-away and Kubernetes'
  `..data` symlink swap are all seen;
- a regular file is read after it is closed or moved into place, never on `created`/`modified`,
  which arrive while an editor is still writing (a half-written file could parse as another rule);
- events are coalesced into one rescan, and contents are compared by hash;
- a file that vanishes is given a short grace period before its hook loses its rule, because vim
  renames the old file away before it writes the new one;
- the scan (read, parse, check, compile, link, freeze) runs in one worker thread, one at a time, so
  calls keep being answered while a big file loads; the loop keeps all the reloader's state, swaps the
  rule set and reports. Whatever a scan raises is logged and the next one retries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from . import metrics
from .engine import Engine
from .hooks import HOOKS, RULE_SUFFIX, hook_for_file
from .nodefaults import NO_RULE_DEFAULTS
from .ruleset import DATA_HOOK, FileOutcome, RuleSet, next_retry, scan

log = logging.getLogger(__name__)

Listener = Callable[[RuleSet], None]


@dataclass(frozen=True)
class ReloadMetrics:
    """Where a reloader reports: the live rules' families, or the shadow rules' own (shadow.py), so that
    a shadow directory's loads never show as the live rules'."""

    reloads: Any = metrics.RELOADS
    rule_errors: Any = metrics.RULE_ERRORS
    rule_info: Any = metrics.RULE_INFO
    rules_loaded: Any = metrics.RULES_LOADED
    last_reload: Any = metrics.LAST_RELOAD  # None: not kept


LIVE_METRICS = ReloadMetrics()


class _Prefixed(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The reloader's log lines, each with a prefix that says which rules they are about."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['prefix'] if self.extra else ''}{msg}", kwargs

#: A file seen being written but never closed is read anyway after this long (a hard link, a writer
#: that died): better a late read than a hook stuck on its old version.
WRITE_TIMEOUT = 2.0
#: files in subdirectories whose half-written state would change a rule
WATCHED_SUFFIXES = (".star", ".json", ".yaml", ".yml", ".csv")


@dataclass(frozen=True)
class _Job:
    """One scan's inputs, taken from the reloader's state on the loop."""

    now: float
    force: bool
    settle: float
    removable: frozenset[str] | None
    writing: frozenset[str]
    may_wait: bool  # may be postponed because a library or data file changed a moment ago
    run_clock: Any


@dataclass(frozen=True)
class _Result:
    """What the worker found: a new rule set, or (ruleset None) a wait before trying again."""

    previous: RuleSet | None
    outcomes: list[FileOutcome]
    wait: float
    ruleset: RuleSet | None = None


class _Handler(FileSystemEventHandler):
    """Runs in watchdog's thread: hands each event to the loop, where all the state lives."""

    def __init__(self, root: str, deliver: Callable[[str, str, str], None]):
        self.root = root
        self.deliver = deliver

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(getattr(event, "dest_path", "") or "")
        kind = event.event_type
        if event.is_directory and kind not in ("moved", "created"):
            return  # the directory's own modified/opened events say nothing about a rule
        if event.is_directory:
            kind = "linked"  # a directory moved in whole (lib/, data/): complete, and its files with it
        elif kind == "created" and not _is_regular(src):
            kind = "linked"  # a symlink (or a FIFO, a socket) is complete the moment it exists: no close follows
        # paths relative to the rules directory: "x.star" is a rule, "lib/x.star" a library, "data/x.json"
        # data. A move from outside has no source (full inotify events): complete contents all the same
        self.deliver(kind, os.path.relpath(src, self.root) if src else "", os.path.relpath(dest, self.root) if dest else "")


#: the GIL switch interval while a scan runs beside the loop (Python's default: 5 ms). Each time the loop
#: thread gives the GIL up (every socket read and write of a call) it waits up to this long to get it back
#: from a busy scan: a call that does that a dozen times waited 60 ms more.
SCAN_SWITCH_INTERVAL = 0.0005


@contextmanager
def _quick_switches(beside_the_loop: bool) -> Iterator[None]:
    if not beside_the_loop:
        yield
        return
    before = sys.getswitchinterval()
    sys.setswitchinterval(SCAN_SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _lower_priority() -> None:
    """The scan thread yields the CPU to the loop (and gRPC's threads) when cores are busy: a nice value
    of its own (Linux schedules threads alone). Best effort: elsewhere it runs as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def _observer() -> BaseObserver:
    """inotify with full move events where watchdog has them: a file moved in from outside the directory
    (`mv /tmp/x.star rules/`) is then a move, complete contents, instead of a `created` that looks like
    the start of a write."""
    try:
        return Observer(generate_full_events=True)  # type: ignore[call-arg]
    except TypeError:  # not inotify
        return Observer()


def _has_contents(path: str) -> bool:
    """Not empty: an empty new file may be one whose writer has not written yet."""
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return True  # gone already: its deletion is the event that counts


class Reloader:
    """Owns the rules directory: the first load, the watch, and every swap of the engine's rule set."""

    def __init__(self, directory: Path, engine: Engine, *, debounce: float = 0.05, grace: float = 0.3,
                 polling: bool = False, poll_interval: float = 1.0, rescan_interval: float = 30.0,
                 settle: float = 0.5, report: ReloadMetrics = LIVE_METRICS, log_prefix: str = ""):
        self.directory = directory
        self.metrics = report
        self.log: logging.Logger | logging.LoggerAdapter[logging.Logger] = (
            _Prefixed(log, {"prefix": log_prefix}) if log_prefix else log)
        self.engine = engine
        self.debounce = debounce
        self.grace = grace
        self.polling = polling
        self.poll_interval = poll_interval
        self.rescan_interval = rescan_interval
        self.settle = settle
        self._postponed_since: float | None = None
        self.listeners: list[Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._observer: BaseObserver | None = None
        self._periodic: asyncio.Task[None] | None = None
        self._missing_since: dict[str, float] = {}
        self._writing: dict[str, float] = {}  # rule file -> when a write to it was first seen
        self._written: set[str] = set()  # rule files of _writing that were modified (not only created)
        self._reported: dict[str, str] = {}  # path -> version whose errors were already logged
        self._executor: ThreadPoolExecutor | None = None
        self._scanning = False  # a scan is running in the executor
        self._again: bool | None = None  # another scan was asked for meanwhile (True: forced)
        self._waiters: list[Callable[[list[FileOutcome]], None]] = []  # told the next scan's outcomes
        #: one scan at a time, in the executor or (start-up, tests, no loop) in the caller's thread
        self._scan_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------

    def load(self) -> list[FileOutcome]:
        """The first load, before serving: whatever is there now (no settling: nothing serves yet)."""
        if not self.directory.is_dir():
            self.log.warning("rules directory %s does not exist: serving no rules until it is created", self.directory)
        return self.rescan(settle=0.0)

    def _youngest_dependency_age(self) -> float | None:
        """Seconds since the newest library or data file (anything under a subdirectory but tests/) changed."""
        now = time.time()
        youngest: float | None = None
        for root, dirs, files in os.walk(self.directory):
            if root == str(self.directory):
                dirs[:] = [d for d in dirs if d != "tests"]
                continue
            for name in files:
                if name.endswith(WATCHED_SUFFIXES):
                    try:
                        age = now - os.stat(os.path.join(root, name)).st_mtime
                    except OSError:
                        continue
                    youngest = age if youngest is None else min(youngest, age)
        return youngest

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        observer: BaseObserver = PollingObserver(timeout=self.poll_interval) if self.polling else _observer()
        # recursive: libraries and data files live in subdirectories (lib/, data/)
        observer.schedule(_Handler(str(self.directory), self._deliver_threadsafe), str(self.directory), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        if self.rescan_interval > 0:
            self._periodic = loop.create_task(self._rescan_periodically())
        # Scans run here, off the loop: parsing and compiling take seconds for big files, and calls
        # must keep being answered meanwhile. One thread: one scan at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hookrules-scan",
                                            initializer=_lower_priority)
        self.log.info("watching %s for rule changes (%s)", self.directory, "polling" if self.polling else "inotify")

    def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        if self._periodic is not None:
            self._periodic.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)  # a scan under way ends within its limits
            self._executor = None
        self._waiters.clear()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None

    # -- change handling ------------------------------------------------------------------------

    def _deliver_threadsafe(self, kind: str, name: str, dest: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.on_file_event, kind, name, dest)

    def on_file_event(self, kind: str, name: str, dest: str = "") -> None:
        """Track files being written; rescan when one has new, complete contents or is gone.

        inotify says `created`/`modified` while a writer is still at work and `closed` when it is
        done; a rescan meanwhile keeps the file's previous rule. Polling only sees that metadata
        changed, so there every change asks for a rescan; in both modes the settle check in scan()
        keeps a file that changed a moment ago (or while it was read) for a later rescan.
        """
        present = dest if kind == "moved" else "" if kind == "deleted" else name
        hook = hook_for_file(present) if present else None
        if hook is not None:
            # Back in place: its grace restarts at the next rescan that finds it missing, so the
            # absences of two saves (vim renames the file away in each) never add up to a removal.
            self._missing_since.pop(hook, None)
        if self.polling:
            self.poke()
        elif kind in ("created", "modified"):
            if hook_for_file(name) is not None:  # only rule files are held this way (see rescan)
                self._writing.setdefault(name, time.monotonic())
                if kind == "modified":
                    self._written.add(name)
            # Whatever wrote it, some rescan must follow: a close usually pokes sooner, but a file can
            # come complete with no close (a hard link, a move the watcher saw as a creation). The
            # settle check keeps it for later if it is still being written then.
            self.poke(self.settle + self.debounce)
        elif kind in ("closed", "moved", "deleted", "linked"):
            for done in (name, dest):
                self._writing.pop(done, None)
                self._written.discard(done)
            self.poke()

    def poke(self, delay: float | None = None) -> None:
        """Ask for a rescan after `delay` (default: the debounce); one rescan serves every poke before it."""
        loop = self._loop
        if loop is None:
            return
        when = loop.time() + (self.debounce if delay is None else delay)
        if self._pending is not None:
            if self._pending.when() <= when:
                return
            self._pending.cancel()  # a save is waiting: do not make it wait for a slower timer
        self._pending = loop.call_at(when, self._run_pending)

    def _run_pending(self) -> None:
        self._pending = None
        self.request()

    async def _rescan_periodically(self) -> None:
        # A safety net for events the watcher missed (overflowing queues, unusual mounts).
        while True:
            await asyncio.sleep(self.rescan_interval)
            self.request()

    def request(self, force: bool = False, done: Callable[[list[FileOutcome]], None] | None = None) -> None:
        """Rescan in the worker thread, then swap and report on the loop; `done` gets the outcomes.

        A request while a scan runs asks for one more scan after it (all such requests share it).
        Without a started loop it is rescan(), here and now."""
        if done is not None:
            self._waiters.append(done)
        loop, executor = self._loop, self._executor
        if loop is None or executor is None:
            self._tell(self.rescan(force))
            return
        if self._scanning:
            self._again = bool(self._again) or force
            return
        job = self._prepare(force, None)
        self._scanning = True
        future = loop.run_in_executor(executor, self._work, job)
        future.add_done_callback(lambda f: self._finished(job, f))

    def _finished(self, job: _Job, future: asyncio.Future[_Result]) -> None:
        """On the loop: apply what the worker found; an exception is logged and the next scan retries."""
        self._scanning = False
        outcomes: list[FileOutcome] = []
        try:
            outcomes = self._apply(job, future.result())
        except asyncio.CancelledError:
            return  # stopping
        except Exception:
            self.log.exception("internal error rescanning %s: the rules serving are kept; rescanning again in %g s",
                          self.directory, max(self.debounce, 1.0))
            self.metrics.reloads.labels("scan", "error").inc()
            self.poke(max(self.debounce, 1.0))
        if self._again is not None:
            force, self._again = self._again, None
            self.request(force)
        else:
            self._tell(outcomes)

    def _tell(self, outcomes: list[FileOutcome]) -> None:
        waiters, self._waiters = self._waiters, []
        for done in waiters:
            try:
                done(outcomes)
            except Exception:
                self.log.exception("rescan listener failed")

    def rescan(self, force: bool = False, settle: float | None = None) -> list[FileOutcome]:
        """Bring the rule set up to date with the directory, in this thread; `force` recompiles even
        unchanged files. The server rescans through request() instead, off the event loop.

        Files modified less than `settle` seconds ago are left for a later rescan: an editor may still
        be writing them, and its events can reach us after the write began.
        """
        job = self._prepare(force, settle)
        return self._apply(job, self._work(job))

    def _prepare(self, force: bool, settle: float | None) -> _Job:
        """What a scan needs from the reloader's state (the loop's): read here, not in the worker."""
        settle = self.settle if settle is None else settle
        now = time.monotonic()
        # A rule file that is not there loses its rule only once it has been gone for `grace` seconds
        # (vim renames it away before writing the new one). Only scan()'s own listing says whether it
        # is there: a look taken just before could catch another moment of the save.
        removable = (frozenset(h for h, since in self._missing_since.items() if now - since >= self.grace)
                     if self.grace > 0 else None)
        for name, since in list(self._writing.items()):
            # a writer that never said it was done, a file gone (renamed away), or one that appeared
            # whole (a hard link; a move seen as a creation) and has not been written to since
            path = os.path.join(self.directory, name)
            if (now - since >= WRITE_TIMEOUT or not os.path.lexists(path)
                    or (name not in self._written and now - since >= settle and _has_contents(path))):
                del self._writing[name]
                self._written.discard(name)
        # Libraries and data files in subdirectories are covered by the settle check alone: watchdog
        # reports the files of a new subdirectory as created with no close to follow (ConfigMaps), so
        # tracking writes there would hold every rescan for WRITE_TIMEOUT.
        writing = frozenset(hook for hook in map(hook_for_file, self._writing) if hook is not None)
        may_wait = bool(settle) and self._loop is not None and (
            self._postponed_since is None or now - self._postponed_since < WRITE_TIMEOUT)
        return _Job(now, force, settle, removable, writing, may_wait, self.engine.run_clock)

    def _work(self, job: _Job) -> _Result:
        """The scan itself: reads, parses, checks, compiles, links. In the worker thread (or the caller's)."""
        with self._scan_lock:
            if job.may_wait:
                age = self._youngest_dependency_age()
                if age is not None and age < job.settle:
                    return _Result(None, [], job.settle - age + 0.01)  # a library or data file just changed
            previous = self.engine.ruleset
            with _quick_switches(self._executor is not None):  # the collector pauses per file (files.py)
                ruleset, outcomes = scan(self.directory, previous, job.writing, force=job.force, settle=job.settle,
                                         removable=job.removable, run_clock=job.run_clock)
            return _Result(previous, outcomes, 0.0, ruleset)

    def _apply(self, job: _Job, result: _Result) -> list[FileOutcome]:
        """Swap in what a scan built, report it, and schedule what it left for later. On the loop."""
        if result.ruleset is None or result.previous is None:  # postponed: rules built now could use half a file
            if self._postponed_since is None:
                self._postponed_since = job.now
            self.poke(result.wait)
            return []
        self._postponed_since = None
        previous, ruleset, outcomes, now, settle = result.previous, result.ruleset, result.outcomes, job.now, job.settle
        missing = {o.hook for o in outcomes if o.result == "missing"}
        self._missing_since = {hook: self._missing_since.get(hook, now) for hook in missing}
        if self._loop is not None:
            if any(o.result == "pending" for o in outcomes):
                self.poke(settle)
            if missing:
                self.poke(self.grace)  # decide about the missing files once their grace is over
            elif job.writing:
                self.poke(WRITE_TIMEOUT)  # read files whose writer never said it was done
        retry = next_retry(ruleset)
        if retry is not None and self._loop is not None:  # a load that failed for want of time: try again then
            self.poke(max(retry - time.monotonic(), self.debounce))
        changed = ruleset.versions() != previous.versions() or set(ruleset.broken) != set(previous.broken)
        self.engine.ruleset = ruleset  # the swap: one assignment, between two calls on the loop
        self._report(outcomes, previous, ruleset, forced=job.force)
        if changed:
            if self.metrics.last_reload is not None:
                self.metrics.last_reload.set(time.time())
            for listener in self.listeners:
                try:
                    listener(ruleset)
                except Exception:
                    self.log.exception("rule set listener failed")
        return outcomes

    def _report(self, outcomes: list[FileOutcome], previous: RuleSet, ruleset: RuleSet, forced: bool = False) -> None:
        """One log line per thing an operator needs to know; metrics for all of it."""
        for out in outcomes:
            if out.result in ("pending", "missing"):
                continue  # not read yet, or gone for a moment: a later rescan reports it
            if out.result not in ("error", "invalid_name"):
                self._reported.pop(out.path, None)  # broken again later: say it again
            if out.result == "unchanged":
                continue
            if out.result in ("error", "invalid_name"):
                if self._reported.get(out.path) == out.version:
                    continue  # the same broken contents: said already
                self._reported[out.path] = out.version
                hook_label = out.hook if out.result == "error" else "invalid"
                self.metrics.rule_errors.labels(hook_label, "load").inc()
                self.metrics.reloads.labels(hook_label, "error").inc()
                if out.kept_version:
                    outcome = f"kept previous version {out.kept_version}"
                elif out.hook == DATA_HOOK:
                    outcome = f"data.{Path(out.path).stem} is missing until this is fixed"
                elif out.result == "error":
                    outcome = f"hook {out.hook} answers by its failure policy ({self.engine.policy(out.hook)}) until this is fixed"
                else:
                    outcome = "file ignored"
                for err in out.errors:  # one line each: log pipelines split on newlines
                    self.log.error("%s => %s", err.one_line(), outcome)
                continue
            self.metrics.reloads.labels(out.hook, out.result).inc()
            if out.hook == DATA_HOOK:
                if out.result == "removed":
                    self.log.warning("data file %s was removed: data.%s is gone", out.path, Path(out.path).stem)
                else:
                    self.log.info("loaded data file %s (version %s)", out.path, out.version)
                continue
            old = previous.get(out.hook)
            if out.result == "loaded":
                _forget_version(self.metrics.rule_info, out.hook, old.version if old is not None else "")
                self.metrics.rule_info.labels(out.hook, out.version).set(1)
                new = ruleset.get(out.hook)
                if old is not None and new is not None and old.file_version == new.file_version:
                    why = "rebuilt on SIGHUP" if forced else "a library or data file it uses changed"
                    self.log.info("reloaded %s (version %s, was %s): %s", out.path, out.version, old.version, why)
                else:
                    self.log.info("loaded %s (version %s%s)", out.path, out.version,
                             f", was {old.version}" if old is not None else "")
            elif out.result == "removed":
                _forget_version(self.metrics.rule_info, out.hook, old.version if old is not None else "")
                source = ruleset.source(out.hook)
                if source is not None:
                    self.log.warning("%s was removed: hook %s is now answered by %s%s", out.path, out.hook, source,
                                RULE_SUFFIX)
                elif HOOKS[out.hook].broker == "portable":
                    self.log.warning("%s was removed: the hooks it answered without a file of their own now answer as "
                                "with no rule (ignore(); RabbitMQ: see the README)", out.path)
                elif out.hook in NO_RULE_DEFAULTS:
                    self.log.warning("%s was removed: hook %s now answers its default (see the README)", out.path, out.hook)
                else:
                    self.log.warning("%s was removed: hook %s now answers ignore()", out.path, out.hook)
        self.metrics.rules_loaded.set(len(ruleset))


def _forget_version(rule_info: Any, hook: str, version: str) -> None:
    if version:
        try:
            rule_info.remove(hook, version)
        except KeyError:
            pass
