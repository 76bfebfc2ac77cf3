"""The docs cannot rot: every JSON example in the README and docs/ meets the event's schema,
and no file points outside the repository."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from exit_handler.schema import schema, strict
from exit_handler.testing import check_message

REPO = Path(__file__).parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```json\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXAMPLES = [
    pytest.param(text, id=f"{path.relative_to(REPO)}:{number}")
    for path in DOCS
    for number, text in enumerate(BLOCK.findall(path.read_text()), 1)
]


def check_example(example: Any) -> None:
    """A Sensor's view ({subject, header, body}), a structured CloudEvent, or event data."""
    if isinstance(example, dict) and {"header", "body"} <= example.keys():
        headers = {name: values[0] for name, values in example["header"].items()}
        check_message(headers, json.dumps(example["body"]).encode())
    elif isinstance(example, dict) and "specversion" in example:
        check_message(
            {"Content-Type": "application/cloudevents+json", "Nats-Msg-Id": example["id"]},
            json.dumps(example).encode(),
        )
    elif isinstance(example, dict) and "provider" in example:
        errors = list(Draft202012Validator(strict(schema())).iter_errors(example))
        assert not errors, [error.message for error in errors]
    else:
        pytest.fail(f"a JSON example of no known shape: {json.dumps(example)[:80]}")


def test_there_are_examples_to_check() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("text", EXAMPLES)
def test_every_json_example_meets_the_schema(text: str) -> None:
    check_example(json.loads(text))


@pytest.mark.parametrize(
    "example",
    [
        {"provider": "kfp", "status": "ok", "pipelineName": "p", "servingModelArtifacts": [],
         "artifacts": []},
        {"subject": "events", "header": {"Content-Type": ["application/json"]},
         "body": {"provider": "kfp"}},
        {"kind": "ConfigMap"},
    ],
)  # fmt: skip
def test_a_broken_example_is_caught(example: dict[str, Any]) -> None:
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check_example(example)


def test_the_readme_links_the_event_reference() -> None:
    head = "\n".join((REPO / "README.md").read_text().splitlines()[:20])
    assert "docs/events.md" in head


def test_no_file_points_outside_the_repository() -> None:
    git = shutil.which("git")
    assert git is not None
    tracked = subprocess.run(
        [git, "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    outside = re.compile(r"\.\./shared|SPEC\.md|SPEC §|\bSPEC\b")
    found = [
        f"{name}:{number}"
        for name in tracked
        if (REPO / name).is_file()
        and not name.startswith("tests/fixtures/")
        and name != "tests/test_docs.py"  # the pattern below names what it looks for
        for number, line in enumerate((REPO / name).read_text(errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    assert found == []
