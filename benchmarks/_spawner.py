"""Start benchmark commands from a small process and report wall time and peak RSS.

Why a separate process: on Linux a child's ``ru_maxrss`` starts at its parent's resident
size (the kernel carries the old address space's high-water mark across fork/vfork and
exec), so a command spawned by the benchmark itself, which has google-cloud-storage loaded,
would report the benchmark's memory, not its own.  Run with ``python -I -S`` this spawner
stays at a few MB, below any Python command it starts, so ``wait4`` gives the command's own
peak.  It also keeps the benchmark's threads and garbage collector off the measured clock.

Protocol: one JSON object per line on stdin, ``{"argv", "env", "stdout", "stderr"}`` (argv[0]
an absolute path, output files to create), answered by one line on stdout,
``{"status", "seconds", "maxrss_kib"}``.  Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def run(command: dict[str, Any]) -> dict[str, object]:
    """Spawn one command, wait for it and measure it from spawn to exit."""
    argv = [str(arg) for arg in command["argv"]]
    env = {str(key): str(value) for key, value in command["env"].items()}
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(command["stdout"]), flags, 0o600),
        (os.POSIX_SPAWN_OPEN, 2, str(command["stderr"]), flags, 0o600),
    ]
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    return {
        "status": os.waitstatus_to_exitcode(status),
        "seconds": seconds,
        "maxrss_kib": usage.ru_maxrss,  # KiB on Linux
    }


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            sys.stdout.write(json.dumps(run(json.loads(line))) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
