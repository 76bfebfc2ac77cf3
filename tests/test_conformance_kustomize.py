"""kustomize, the installer: the real kustomize API renders each kustomization of
``workflow-templates/`` as ``kubectl kustomize`` and ``kubectl apply -k`` do.

The harness in ``conformance/kustomize/`` runs ``krusty.MakeKustomizer(MakeDefaultOptions())``
from ``sigs.k8s.io/kustomize/api`` v0.21.2 (the module from the Go proxy, nothing copied) over
directories on disk. The tests' own emulation (``kustomized`` in test_argo_side.py, which every
manifest test reads) must render the same objects, compared as a multiset of parsed documents,
and the README's install line (``kubectl apply -k workflow-templates/ -n kubeflow``) needs every
object of the top-level kustomization to leave its namespace to ``-n``. Two temp kustomizations
show the harness and the comparison can fail: a missing resource, and a ``namespace:`` field
(real kustomize sets it on every namespaced object; the emulation ignores it).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from go_harness import run_harness
from test_argo_side import KINDS, MANIFESTS, kustomized

pytestmark = pytest.mark.conformance

HARNESS = "kustomize"
VERSION = "v0.21.2"


def render(*directories: Path) -> dict[Path, dict[str, str]]:
    """Real kustomize's output for each directory, one harness process for all of them."""
    answer = run_harness(HARNESS, {"dirs": [str(d.resolve()) for d in directories]})
    assert answer["kustomize"] == VERSION, answer["kustomize"]
    results = answer["results"]
    assert [r["dir"] for r in results] == [str(d.resolve()) for d in directories]
    return {d: r for d, r in zip(directories, results, strict=True)}


def parsed(text: str) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def multiset(docs: list[Any]) -> Counter[str]:
    return Counter(json.dumps(doc, sort_keys=True) for doc in docs)


def fields(real: Any, ours: Any, path: str = "") -> list[str]:
    """Where two parsed documents differ, as `path: real != ours` lines."""
    if isinstance(real, dict) and isinstance(ours, dict):
        return [
            line
            for key in sorted(real.keys() | ours.keys())
            for line in fields(real.get(key), ours.get(key), f"{path}.{key}")
        ]
    if isinstance(real, list) and isinstance(ours, list) and len(real) == len(ours):
        return [
            line
            for i, pair in enumerate(zip(real, ours, strict=True))
            for line in fields(*pair, f"{path}[{i}]")
        ]
    return [] if real == ours else [f"{path}: {real!r} != {ours!r}"]


def identity(doc: Any) -> str:
    meta = doc.get("metadata", {}) if isinstance(doc, dict) else {}
    return f"{doc.get('kind')}/{meta.get('namespace', '')}/{meta.get('name')}"


def difference(real: list[Any], ours: list[Any]) -> str:
    """Empty when both render the same documents in any order; otherwise what differs (field by
    field for a document both render once under the same kind, namespace and name)."""
    only_real, only_ours = multiset(real) - multiset(ours), multiset(ours) - multiset(real)
    if not only_real and not only_ours:
        return ""
    left = [json.loads(doc) for doc in only_real.elements()]
    right = [json.loads(doc) for doc in only_ours.elements()]
    lines = []
    for doc in left:
        twins = [other for other in right if identity(other) == identity(doc)]
        if len(twins) == 1:
            lines += [
                f"{identity(doc)} (real != emulation) {line}" for line in fields(doc, twins[0])
            ]
            right.remove(twins[0])
        else:
            lines.append(f"only in real kustomize: {json.dumps(doc, sort_keys=True)}")
    lines += [f"only in the emulation: {json.dumps(doc, sort_keys=True)}" for doc in right]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Any]]:
    directories = {kind: MANIFESTS / kind for kind in KINDS}
    results = render(*directories.values())
    out: dict[str, list[Any]] = {}
    for kind, directory in directories.items():
        result = results[directory]
        assert result["error"] == "", f"kustomize {directory}: {result['error']}"
        out[kind] = parsed(result["yaml"])
    return out


@pytest.mark.parametrize("directory", list(KINDS))
def test_real_kustomize_renders_what_the_emulation_renders(
    rendered: dict[str, list[Any]], directory: str
) -> None:
    # kustomize's `images:` rewrites only the fields its config names (`containers[]` and
    # `initContainers[]` lists); an Argo template's singular `container.image` needs a
    # `configurations:` entry (images: path spec/templates[]/container/image) to be rewritten.
    real = rendered[directory]
    assert real, f"kustomize rendered nothing for workflow-templates/{directory}"
    assert {doc["kind"] for doc in real} == KINDS[directory]
    assert difference(real, kustomized(MANIFESTS / directory)) == ""


def test_the_install_line_leaves_the_namespace_to_kubectl(
    rendered: dict[str, list[Any]],
) -> None:
    """`kubectl apply -k workflow-templates/ -n kubeflow` fails on an object naming another
    namespace, and silently ignores `-n` for one naming the same: none may name one."""
    named = [
        f"{doc['kind']}/{doc['metadata']['name']}: {doc['metadata']['namespace']}"
        for doc in rendered[""]
        if "namespace" in doc.get("metadata", {})
    ]
    assert named == []


def test_a_missing_resource_fails_the_render(tmp_path: Path) -> None:
    copy = tmp_path / "missing"
    shutil.copytree(MANIFESTS / "cluster", copy)
    kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
    kustomization["resources"].append("no-such-file.yaml")
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = render(copy)[copy]
    assert result["yaml"] == ""
    assert "no-such-file.yaml" in result["error"], result["error"]


def test_the_comparison_catches_a_namespace_the_emulation_ignores(tmp_path: Path) -> None:
    """Real kustomize's `namespace:` overrides the namespace every object names; the emulation
    does not implement it, so the comparison must flag a kustomization that sets one."""
    copy = tmp_path / "renamespaced"
    shutil.copytree(MANIFESTS / "events", copy)
    kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
    kustomization["namespace"] = "elsewhere"
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = render(copy)[copy]
    assert result["error"] == "", result["error"]
    real = parsed(result["yaml"])
    assert {doc["metadata"]["namespace"] for doc in real} == {"elsewhere"}
    ours = kustomized(copy)
    assert {doc["metadata"]["namespace"] for doc in ours} == {"kfp-operator"}
    assert "elsewhere" in difference(real, ours)
