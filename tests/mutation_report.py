"""The score of `make mutate`, per module: killed among the mutants that are not equivalent.

mutmut keeps each mutant's verdict in `mutants/exit_handler/<module>.py.meta`; this reads
them and `tests/mutation-equivalent.txt`, the mutants that cannot change behaviour, each
with its reason, so that nobody investigates them twice. Run from the repository's root,
after `mutmut run`: `.venv/bin/python tests/mutation_report.py [MODULE]`.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).parent.parent
META = REPO / "mutants" / "exit_handler"
EQUIVALENT = Path(__file__).parent / "mutation-equivalent.txt"
TARGET = 0.90
KILLED = {1, 3, 36, 37, -24, 24, 152, 255}  # failed, errored, timed out or refused by mypy
UNTESTED = {5, 33}  # no test of the module's judges reaches the mutated function


def equivalent() -> dict[str, str]:
    """`mutant name  reason` per line (the name may be a pattern: `*` for any text); `#`
    starts a comment."""
    found = {}
    for line in EQUIVALENT.read_text().splitlines():
        name, _, reason = line.partition("#")[0].strip().partition(" ")
        if name:
            found[name] = reason.strip()
    return found


def main(modules: list[str]) -> int:
    excluded = equivalent()
    failing = False
    print(
        f"{'module':<20} {'mutants':>8} {'checked':>8} {'killed':>7} {'equiv.':>7} {'score':>7} "
        f"{'test min':>9}"
    )
    for meta in sorted(META.glob(f"{modules[0] if modules else '*'}.py.meta")):
        stored = json.loads(meta.read_text())
        verdicts = stored["exit_code_by_key"]
        minutes = sum(stored.get("durations_by_key", {}).values()) / 60  # over all workers
        checked = {k: v for k, v in verdicts.items() if v is not None}
        if not checked:
            continue
        counts = Counter(_verdict(name, code, excluded) for name, code in checked.items())
        judged = counts["killed"] + counts["alive"]
        score = counts["killed"] / judged if judged else 1.0
        failing |= score < TARGET
        module = meta.name.removesuffix(".py.meta")
        print(
            f"{module:<20} {len(verdicts):>8} {len(checked):>8} {counts['killed']:>7} "
            f"{counts['equivalent']:>7} {score:>7.1%} {minutes:>9.1f}"
        )
        alive = (k for k, v in checked.items() if v not in KILLED and not _listed(k, excluded))
        for name in sorted(alive):
            why = "no test reaches it" if checked[name] in UNTESTED else "survived"
            print(f"    {why}: {name}  (mutmut show {name})")
        surviving = [k for k, v in checked.items() if v not in KILLED]
        for pattern in sorted(excluded):  # entries that a test or a code change made stale
            if pattern.startswith(f"exit_handler.{module}.") and not any(
                fnmatch.fnmatchcase(k, pattern) for k in surviving
            ):
                print(f"    listed as equivalent, but killed or gone: {pattern}")
    return 1 if failing else 0


def _verdict(name: str, code: int, excluded: dict[str, str]) -> str:
    return "killed" if code in KILLED else "equivalent" if _listed(name, excluded) else "alive"


def _listed(name: str, excluded: dict[str, str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in excluded)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
