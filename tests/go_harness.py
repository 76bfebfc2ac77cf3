"""Build and run the Go code in `conformance/` and `e2e/`: the real upstream code decides.

Each folder of `conformance/` is one tiny Go main package with its own committed go.mod/go.sum,
pinned to one upstream release line; it reads JSON on stdin and prints JSON on stdout. Each
folder of `e2e/` is only a go.mod/go.sum whose `tool` directives pin upstream commands (etcd,
kube-apiserver, kwok, workflow-controller) to build as they are. Binaries are cached outside the
repository by a digest of the folder's sources and the Go version, so a warm run only pays for
running them; Go's module and build caches stay where `go env` puts them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
    return build(CONFORMANCE / name, ["."], single=True)


def tools(folder: Path) -> Path:
    """Build the `tool` packages of FOLDER's go.mod (upstream commands pinned by version) once
    per source digest; return the directory that holds the binaries."""
    go_mod = (folder / "go.mod").read_text()
    packages = re.findall(r"^\s*(?:tool\s+)?(\S+/\S+)$", _tool_block(go_mod), re.MULTILINE)
    return build(folder, packages, single=False)


def _tool_block(go_mod: str) -> str:
    """The `tool` directives of a go.mod, one package per line."""
    block = re.search(r"^tool \((.*?)^\)", go_mod, re.MULTILINE | re.DOTALL)
    if block is not None:
        return block.group(1)
    return "\n".join(re.findall(r"^tool (\S+)$", go_mod, re.MULTILINE))


def build(folder: Path, packages: list[str], *, single: bool) -> Path:
    """`go build` PACKAGES in FOLDER into the cache, keyed by a digest of the folder's sources
    and the Go version: a binary when SINGLE, else a directory of binaries."""
    toolchain = go()
    digest = hashlib.sha256()
    version = subprocess.run(
        [toolchain, "version"], capture_output=True, text=True, check=True
    ).stdout
    digest.update(version.encode())
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (path.suffix == ".go" or path.name in {"go.mod", "go.sum"}):
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    target = CACHE / f"{folder.parent.name}-{folder.name}-{digest.hexdigest()[:16]}"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    output = str(partial) if single else f"{partial}{os.sep}"
    done = subprocess.run(
        [toolchain, "build", "-trimpath", "-o", output, *packages],
        cwd=folder,
        env=_go_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"building {folder.parent.name}/{folder.name} failed:\n{done.stderr[-4000:]}")
    partial.replace(target)
    return target


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
