"""Hot reload: watchdog reports changes in the rules directory, the loop rescans and swaps the rule set.

Why it looks like this (see ../shared/reference/sandbox-and-libraries.md section 4):
- the directory is watched, not the files, so temp-file renames, vim's rename-away and Kubernetes'
  `..data` symlink swap are all seen;
- a regular file is read after it is closed or moved into place, never on `created`/`modified`,
  which arrive while an editor is still writing (a half-written file could parse as another rule);
- events are coalesced into one rescan, and contents are compared by hash;
- a file that vanishes is given a short grace period before its hook loses its rule, because vim
  renames the old file away before it writes the new one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from . import metrics
from .engine import Engine
from .ruleset import FileOutcome, RuleSet, scan

log = logging.getLogger(__name__)

Listener = Callable[[RuleSet], None]

#: events that can mean "a file now has new, complete contents" (or is gone)
_SETTLED_EVENTS = {"closed", "moved", "deleted"}


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Callable[[], None], polling: bool):
        self.notify = notify
        self.polling = polling

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind in _SETTLED_EVENTS or self.polling and kind in ("modified", "created"):
            self.notify()
        elif kind == "created" and os.path.islink(os.fsdecode(event.src_path)):
            self.notify()  # a symlink is complete the moment it exists


class Reloader:
    """Owns the rules directory: the first load, the watch, and every swap of the engine's rule set."""

    def __init__(self, directory: Path, engine: Engine, *, debounce: float = 0.05, grace: float = 0.3,
                 polling: bool = False, poll_interval: float = 1.0, rescan_interval: float = 30.0):
        self.directory = directory
        self.engine = engine
        self.debounce = debounce
        self.grace = grace
        self.polling = polling
        self.poll_interval = poll_interval
        self.rescan_interval = rescan_interval
        self.listeners: list[Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._observer: BaseObserver | None = None
        self._periodic: asyncio.Task[None] | None = None
        self._missing_since: dict[str, float] = {}
        self._reported: dict[str, str] = {}  # path -> version whose errors were already logged

    # -- lifecycle ------------------------------------------------------------------------------

    def load(self) -> list[FileOutcome]:
        """The first load, before serving."""
        if not self.directory.is_dir():
            log.warning("rules directory %s does not exist: serving no rules until it is created", self.directory)
        return self.rescan()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        observer: BaseObserver = PollingObserver(timeout=self.poll_interval) if self.polling else Observer()
        observer.schedule(_Handler(self._notify_threadsafe, self.polling), str(self.directory), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        if self.rescan_interval > 0:
            self._periodic = loop.create_task(self._rescan_periodically())
        log.info("watching %s for rule changes (%s)", self.directory, "polling" if self.polling else "inotify")

    def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        if self._periodic is not None:
            self._periodic.cancel()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None

    # -- change handling ------------------------------------------------------------------------

    def _notify_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.poke)

    def poke(self, delay: float | None = None) -> None:
        """Ask for a rescan soon; further pokes before it runs are absorbed by it."""
        if self._pending is None and self._loop is not None:
            self._pending = self._loop.call_later(self.debounce if delay is None else delay, self._run_pending)

    def _run_pending(self) -> None:
        self._pending = None
        self.rescan()

    async def _rescan_periodically(self) -> None:
        # A safety net for events the watcher missed (overflowing queues, unusual mounts).
        while True:
            await asyncio.sleep(self.rescan_interval)
            self.rescan()

    def rescan(self) -> list[FileOutcome]:
        previous = self.engine.ruleset
        now = time.monotonic()
        for hook, rule in previous.rules.items():
            if os.path.exists(rule.path):
                self._missing_since.pop(hook, None)
            else:
                self._missing_since.setdefault(hook, now)
        waiting = frozenset(h for h, since in self._missing_since.items() if now - since < self.grace)
        ruleset, outcomes = scan(self.directory, previous, waiting)
        for hook in list(self._missing_since):
            if hook not in ruleset.rules:
                del self._missing_since[hook]
        if waiting and self._loop is not None:
            self.poke(self.grace)  # decide about the vanished files once their grace is over
        changed = ruleset.versions() != previous.versions() or set(ruleset.broken) != set(previous.broken)
        self.engine.ruleset = ruleset  # the swap: one assignment, between two calls on the loop
        self._report(outcomes, previous, ruleset)
        if changed:
            metrics.LAST_RELOAD.set(time.time())
            for listener in self.listeners:
                try:
                    listener(ruleset)
                except Exception:
                    log.exception("rule set listener failed")
        return outcomes

    def _report(self, outcomes: list[FileOutcome], previous: RuleSet, ruleset: RuleSet) -> None:
        """One log line per thing an operator needs to know; metrics for all of it."""
        for out in outcomes:
            if out.result == "unchanged":
                continue
            if out.result in ("error", "invalid_name"):
                if self._reported.get(out.path) == out.version:
                    continue  # the same broken contents: said already
                self._reported[out.path] = out.version
                hook_label = out.hook if out.result == "error" else "invalid"
                metrics.RULE_ERRORS.labels(hook_label, "load").inc()
                metrics.RELOADS.labels(hook_label, "error").inc()
                outcome = (f"kept previous version {out.kept_version}" if out.kept_version
                           else f"hook {out.hook} has no rule until this is fixed"
                           if out.result == "error" else "file ignored")
                log.error("%s\n  => %s", "\n".join(e.format() for e in out.errors), outcome)
                continue
            self._reported.pop(out.path, None)
            metrics.RELOADS.labels(out.hook, out.result).inc()
            old = previous.get(out.hook)
            if out.result == "loaded":
                _forget_version(out.hook, old.version if old is not None else "")
                metrics.RULE_INFO.labels(out.hook, out.version).set(1)
                log.info("loaded %s (version %s%s)", out.path, out.version,
                         f", was {old.version}" if old is not None else "")
            elif out.result == "removed":
                _forget_version(out.hook, old.version if old is not None else "")
                log.warning("%s was removed: hook %s now answers ignore()", out.path, out.hook)
        metrics.RULES_LOADED.set(len(ruleset))


def _forget_version(hook: str, version: str) -> None:
    if version:
        try:
            metrics.RULE_INFO.remove(hook, version)
        except KeyError:
            pass
