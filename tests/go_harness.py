"""Build and run the Go conformance harnesses in `conformance/`: the real upstream code decides.

Each folder of `conformance/` is one tiny Go main package with its own committed go.mod/go.sum,
pinned to one upstream release line; it reads JSON on stdin and prints JSON on stdout. Binaries
are cached outside the repository by a digest of the folder's sources and the Go version, so a
warm run only pays for running them; Go's module and build caches stay where `go env` puts them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

CONFORMANCE = Path(__file__).parent.parent / "conformance"
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "kfp-exit-handler"
    / "conformance"
)
# `make conformance` and `make test-all` set this: there a missing Go fails instead of skipping.
REQUIRE_GO = "EXIT_HANDLER_REQUIRE_GO"


def go() -> str:
    """The Go toolchain, or a skip (a failure where conformance is required)."""
    found = shutil.which("go")
    if found is None:
        if os.environ.get(REQUIRE_GO):
            pytest.fail("conformance needs Go on PATH (https://go.dev/dl/)")
        pytest.skip("conformance skipped: no Go toolchain on PATH")
    return found


def _go_env() -> dict[str, str]:
    return {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOFLAGS": "-mod=readonly",
        "GOWORK": "off",
        "GOTOOLCHAIN": "local",
    }


def harness(name: str) -> Path:
    """Build `conformance/NAME` once per source digest; return the binary."""
    toolchain = go()
    folder = CONFORMANCE / name
    digest = hashlib.sha256()
    version = subprocess.run(
        [toolchain, "version"], capture_output=True, text=True, check=True
    ).stdout
    digest.update(version.encode())
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (path.suffix == ".go" or path.name in {"go.mod", "go.sum"}):
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    binary = CACHE / f"{name}-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(f".{os.getpid()}.partial")
    done = subprocess.run(
        [toolchain, "build", "-trimpath", "-o", str(partial), "."],
        cwd=folder,
        env=_go_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"building conformance/{name} failed:\n{done.stderr[-4000:]}")
    partial.replace(binary)
    return binary


def run_harness(name: str, request: Any, *, timeout: float = 120) -> Any:
    """Run a harness with `request` as JSON on stdin; its JSON answer, or a failed test."""
    done = subprocess.run(
        [str(harness(name))],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert done.returncode == 0, f"conformance/{name} exited {done.returncode}:\n{done.stderr}"
    return json.loads(done.stdout)
