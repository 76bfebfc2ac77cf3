"""Where a cold publish's import time goes: ``python -X importtime``, beside the floors.

``bench.py`` says how far a cold publish is from its floor; this says what to cut. It runs
the same publishes as ``bench.py`` (JetStream-acked, a root with 10 earlier runs, and no
root) and the same floor commands under ``-X importtime`` several times, takes per-module
medians, and prints the modules the handler imports beyond the floor, grouped by package,
plus what the floor itself spends its time on. Run it with the project's venv python:
``.venv/bin/python benchmarks/import_profile.py``.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import (
    child_env,
    create_stream,
    publish_argv,
    root_args,
    seed,
    start_this_run,
)

from exit_handler.testing import FakeGcsServer, NatsServer

RUNS = 7
TOP = 12
ROOTS = ((10, 6),)
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)")
Profile = dict[str, tuple[float, float]]  # module -> (self ms, cumulative ms)


def importtime(argv: Sequence[str], env: dict[str, str]) -> dict[str, tuple[int, int]]:
    """One run's ``-X importtime`` lines: module -> (self us, cumulative us)."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return {
        match[3]: (int(match[1]), int(match[2]))
        for match in map(_LINE.match, done.stderr.splitlines())
        if match
    }


def profile(argv: Callable[[], list[str]], env: dict[str, str]) -> Profile:
    """Per-module medians over RUNS runs: one run's import times vary by a third."""
    selfs: dict[str, list[int]] = defaultdict(list)
    cumulatives: dict[str, list[int]] = defaultdict(list)
    for _ in range(RUNS):
        for module, (own, cumulative) in importtime(argv(), env).items():
            selfs[module].append(own)
            cumulatives[module].append(cumulative)
    return {
        module: (
            statistics.median(selfs[module]) / 1000,
            statistics.median(cumulatives[module]) / 1000,
        )
        for module in selfs
    }


def fixed(argv: list[str]) -> Callable[[], list[str]]:
    """An argv factory for a command that is the same every run."""
    return lambda: list(argv)


def package(module: str) -> str:
    """Group by top-level package; google.* by its second level, which is the real owner."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "google" and len(parts) > 1 else parts[0]


def by_package(modules: Profile) -> list[tuple[str, int, float]]:
    totals: dict[str, list[float]] = defaultdict(list)
    for module, (own, _) in modules.items():
        totals[package(module)].append(own)
    rows = [(name, len(owns), sum(owns)) for name, owns in totals.items()]
    return sorted(rows, key=lambda row: -row[2])


def section(label: str, handler: Profile, floor: Profile, floor_label: str) -> list[str]:
    extra = {module: times for module, times in handler.items() if module not in floor}
    total = sum(own for own, _ in handler.values())
    floor_total = sum(own for own, _ in floor.values())
    extra_total = sum(own for own, _ in extra.values())
    return [
        f"### `exit-handler publish` {label} vs {floor_label}",
        "",
        f"Import self time, sum of medians: handler {total:.1f} ms ({len(handler)} modules), "
        f"floor {floor_total:.1f} ms ({len(floor)} modules); beyond the floor "
        f"{extra_total:.1f} ms in {len(extra)} modules.",
        "",
        "| beyond the floor: package | modules | self time |",
        "|---|---:|---:|",
        *(f"| {name} | {count} | {own:.1f} ms |" for name, count, own in by_package(extra)),
        "",
        "| beyond the floor: module | self | cumulative |",
        "|---|---:|---:|",
        *(
            f"| {module} | {own:.1f} ms | {cumulative:.1f} ms |"
            for module, (own, cumulative) in sorted(extra.items(), key=lambda item: -item[1][0])[
                :TOP
            ]
        ),
        "",
        "| the floor itself: package | modules | self time |",
        "|---|---:|---:|",
        *(f"| {name} | {count} | {own:.1f} ms |" for name, count, own in by_package(floor)[:TOP]),
        "",
    ]


def main() -> int:
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="exit-handler-imports-") as tmp:
        workdir = Path(tmp)
        seed(workdir / "gcs", ROOTS)
        with (
            NatsServer(store_dir=workdir / "jetstream") as nats_server,
            FakeGcsServer(data_dir=workdir / "gcs") as gcs,
        ):
            create_stream(nats_server.url)
            created_at = start_this_run(gcs, ROOTS)
            env = child_env(gcs.endpoint, workdir / "pycache")
            launcher = [python, "-X", "importtime", "-m", "exit_handler"]
            cases = [
                (
                    "with a root (10 earlier runs)",
                    publish_argv(nats_server.url, *root_args(created_at), launcher=launcher),
                    fixed([python, "-X", "importtime", "-c", "import google.cloud.storage, nats"]),
                    '`python -c "import google.cloud.storage, nats"`',
                ),
                (
                    "without a root",
                    publish_argv(nats_server.url, launcher=launcher),
                    fixed([python, "-X", "importtime", "-c", "import nats"]),
                    '`python -c "import nats"`',
                ),
            ]
            lines = [f"## Import time of a cold publish (medians of {RUNS} runs, .pyc cached)", ""]
            for label, handler, floor, floor_label in cases:
                importtime(handler(), env)  # warm-up: writes the bytecode cache
                importtime(floor(), env)
                lines += section(label, profile(handler, env), profile(floor, env), floor_label)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
