"""Run a command with sched_setscheduler refused (EPERM) by a real seccomp filter, as systemd's
SystemCallFilter=~@resources refuses it: `python tests/seccomp_refuse.py COMMAND ARGS...`.

The filter (classic BPF, installed with prctl as any unprivileged process may after PR_SET_NO_NEW_PRIVS)
answers that one system call EPERM and lets every other through; exec keeps it for the command.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

#: machine -> (AUDIT_ARCH_*, the number of sched_setscheduler)
ARCHES = {"x86_64": (0xC000003E, 144), "aarch64": (0xC00000B7, 119)}
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
EPERM = 1


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def supported() -> bool:
    return sys.platform == "linux" and platform.machine() in ARCHES


def refuse_sched_setscheduler() -> None:
    arch, nr = ARCHES[platform.machine()]
    program = (SockFilter * 6)(
        SockFilter(LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        SockFilter(JEQ_K, 0, 3, arch),  # another ABI: allow
        SockFilter(LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        SockFilter(JEQ_K, 0, 1, nr),
        SockFilter(RET_K, 0, 0, RET_ERRNO | EPERM),
        SockFilter(RET_K, 0, 0, RET_ALLOW),
    )
    fprog = SockFprog(len(program), program)
    libc = ctypes.CDLL(None, use_errno=True)
    for args in ((PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), (PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)):
        if libc.prctl(*args) != 0:
            raise OSError(ctypes.get_errno(), f"prctl{args[:2]}: {os.strerror(ctypes.get_errno())}")


if __name__ == "__main__":
    refuse_sched_setscheduler()
    os.execv(sys.argv[1], sys.argv[1:])
