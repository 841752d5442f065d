"""The engine guard: a tiny parent for one engine that makes "the daemon died" kill the whole tree.

Run as `python guard.py PARENT_PID -- COMMAND...` by the launcher, in a fresh session (so its pid is
the process group id). PR_SET_PDEATHSIG alone only reaches a direct child; vLLM's EngineCore is a
grandchild. So the guard asks the kernel for SIGUSR2 when the daemon dies, and on it kills its own
process group with SIGKILL. SIGTERM from a staged stop reaches every member of the group directly:
the guard ignores it and keeps waiting for its child, so the grace period is the engine's to use.
When the child exits, members it left behind in the group are killed, and the guard exits with the
child's status (128+N for a signal). Stdlib only: it must start in milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def _group_members(pgid: int) -> list[int]:
    pids: list[int] = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields: state ppid pgrp ...
            pids.append(int(name))
    return pids


def _kill_group_and_exit(signum: int, frame: object) -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: guard.py PARENT_PID -- COMMAND...", file=sys.stderr)
        return 2
    parent = int(argv[0])
    command = argv[2:]
    signal.signal(signal.SIGUSR2, _kill_group_and_exit)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGUSR2, 0, 0, 0)
    if os.getppid() != parent:  # the daemon died before prctl took effect
        return 1
    try:
        # The child gets default dispositions back (Popen restores SIGPIPE etc.; reset ours here).
        child = subprocess.Popen(command, preexec_fn=_reset_signals)
    except OSError as exc:
        print(f"guard: cannot execute {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    rc = child.wait()
    for pid in _group_members(os.getpgid(0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return 128 - rc if rc < 0 else rc


def _reset_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
