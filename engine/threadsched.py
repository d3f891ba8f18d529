"""The event loop's thread runs as usual; every other thread of the server yields to it (SCHED_BATCH).

Why: grpc.aio hands each completion of a call (its arrival, its message, its reply sent) from grpc-core's
I/O threads to the loop through a poller thread that wakes once per completion, and a waking thread
preempts the one running. On a busy core that is about six preemptions of the loop per unary call, each
two context switches and a loop turn for one completion. A SCHED_BATCH thread is never woken "over" the
running one (Linux's wake-up preemption check, kernel/sched/fair.c: a waking task that is not
SCHED_NORMAL does not preempt; the tick does); it runs when the loop waits or its slice ends,
and then hands over every completion that piled up meanwhile in one go. grpc-core's timer thread is one
of those moved: on a busy core a deadline it fires may wait for the loop's slice too (milliseconds).

Measured (bench/README.md, 2026-12-05, the server on one core, the same code with HOOKRULES_THREADS=normal
and without): the loop's involuntary switches fell from 5.9 to 0.06 a call, and the CPU per ExHook call by
15-18% (authenticate 180 -> 149 us, authorize 191 -> 158, publish rewrite 212 -> 181, a Python client's
session mix 196 -> 160), with lower latency at saturation (the mix's p99 14.8 -> 11.2 ms). At low load
nothing changes: an idle core takes a waking thread at once. The webhook port has no helper threads in a
call's path, so it is unaffected.

Not a privilege: any thread may move between SCHED_OTHER and SCHED_BATCH (no capability, no RLIMIT_NICE;
a thread's nice value is kept), and realtime policies are never asked for. Only threads at SCHED_OTHER
are moved, and none when the operator chose a policy for the whole server (`chrt --batch`, `--idle`):
the loop's own policy says so. Nor when /proc is another PID namespace's (`unshare --pid` without a
/proc of its own): the thread ids it lists are not this process's. grpc-core starts I/O threads as load
needs them, so the sweep repeats every SWEEP_INTERVAL seconds (a directory listing and a system call a
thread: tens of microseconds).

HOOKRULES_THREADS: empty or `batch` for the above, `normal` to leave every thread as it starts; anything
else refuses to start. Where the system refuses sched_setscheduler (a seccomp filter: the systemd unit
allows it by name), the server says so once and serves on with the threads as they are.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading

from .config import ConfigError

log = logging.getLogger(__name__)

ENV = "HOOKRULES_THREADS"
CHOICES = ("batch", "normal")
#: how often threads started since the last sweep are moved (seconds)
SWEEP_INTERVAL = 2.0
TASKS = "/proc/self/task"
_POLICY_NAMES = {getattr(os, name, -1): name for name in ("SCHED_BATCH", "SCHED_IDLE", "SCHED_FIFO", "SCHED_RR")}
#: a flag sched_getscheduler ORs into the policy (`chrt --reset-on-fork`): not a policy of its own
_RESET_ON_FORK = getattr(os, "SCHED_RESET_ON_FORK", 0)


class ThreadPolicyError(ConfigError):
    """HOOKRULES_THREADS names no choice: the server refuses to start (exit 2)."""


def wanted(choice: str | None = None) -> str:
    """`choice`, else HOOKRULES_THREADS, else batch; checked."""
    raw = choice if choice is not None else os.environ.get(ENV, "")
    value = raw.strip().lower() or "batch"
    if value not in CHOICES:
        raise ThreadPolicyError(f"{ENV}={raw[:20]!r}: the helper threads' policy is one of {', '.join(CHOICES)} "
                                "(empty: batch)")
    return value


def supported() -> bool:
    """Linux's per-thread scheduling policies, and /proc to list the threads."""
    return hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_BATCH") and os.path.isdir(TASKS)


def _own_proc(tid: int) -> bool:
    """/proc is this process's PID namespace's: its own entry and its thread's id are there as it knows
    them (under `unshare --pid` without a /proc of its own they are not, and the ids listed are others')."""
    try:
        return os.readlink("/proc/self") == str(os.getpid()) and os.path.isdir(f"{TASKS}/{tid}")
    except OSError:
        return False


def batch_other_threads(keep: int) -> int:
    """Move every thread of this process at SCHED_OTHER, except `keep` (a native thread id), to
    SCHED_BATCH; return how many moved. A thread that ends meanwhile is skipped; a refusal (EPERM)
    raises PermissionError."""
    moved = 0
    batch = os.sched_param(0)
    for name in os.listdir(TASKS):
        tid = int(name)
        if tid == keep:
            continue
        try:
            if os.sched_getscheduler(tid) & ~_RESET_ON_FORK != os.SCHED_OTHER:
                continue
            os.sched_setscheduler(tid, os.SCHED_BATCH, batch)
        except ProcessLookupError:  # the thread ended since the listing
            continue
        moved += 1
    return moved


class HelperThreads:
    """The server's side: start() on the loop's thread sweeps at once and every SWEEP_INTERVAL; stop()."""

    def __init__(self, choice: str | None = None, interval: float = SWEEP_INTERVAL):
        self.policy = wanted(choice)
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._loop_thread = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.policy == "normal":
            log.info("helper threads: left as they start (%s=normal)", ENV)
            return
        if not supported():
            log.info("helper threads: this system has no per-thread SCHED_BATCH; left as they start")
            return
        self._loop_thread = threading.get_native_id()
        if not _own_proc(self._loop_thread):  # thread ids listed there are another PID namespace's
            log.info("helper threads: left as they start (/proc is another PID namespace's: its thread ids are "
                     "not this process's)")
            return
        try:
            policy = os.sched_getscheduler(0) & ~_RESET_ON_FORK
        except OSError as exc:  # a seccomp profile that refuses even the question
            self._refused(exc)
            return
        if policy != os.SCHED_OTHER:  # `chrt --batch`, `chrt --idle`, or inherited: chosen for the whole server
            log.info("helper threads: left as they start (the server started at %s, not SCHED_OTHER: `chrt`, or its "
                     "parent's policy)", _POLICY_NAMES.get(policy, f"scheduling policy {policy}"))
            return
        moved = self._sweep(loop)
        if moved is not None:
            log.info("helper threads: %d moved to SCHED_BATCH, so that their wake-ups wait for the event loop (the "
                     "default; %s=normal leaves them)", moved, ENV)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> int | None:
        """Move the threads started since the last sweep; None when the system refused (said once)."""
        try:
            moved = batch_other_threads(self._loop_thread)
        except OSError as exc:  # EPERM from a seccomp filter, EINVAL from a kernel without the policy
            self._refused(exc)
            return None
        self._handle = loop.call_later(self.interval, self._sweep, loop)
        return moved

    def _refused(self, exc: OSError) -> None:
        """Said once; no more sweeps."""
        hint = (f"a seccomp filter? Allow sched_setscheduler, or set {ENV}=normal to silence this"
                if exc.errno == errno.EPERM else f"this system refuses SCHED_BATCH; set {ENV}=normal to silence this")
        log.warning("helper threads: cannot move them to SCHED_BATCH (%s); serving on, at more CPU per gRPC call "
                    "on a busy core (%s)", exc.strerror or exc, hint)
        self._handle = None

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
