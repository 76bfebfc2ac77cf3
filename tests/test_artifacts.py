"""Run Artifact Definitions resolved against a real GCS API with custom metadata."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import base_args, run_handler, run_starts_now

from exit_handler.artifact_definitions import parse_definition
from exit_handler.artifacts import resolve
from exit_handler.deadline import Deadline
from exit_handler.event import Artifact
from exit_handler.pipeline_root import PipelineRoot, RootLister, Window
from exit_handler.run import parse_timestamp
from exit_handler.testing import FakeGcsServer, NatsServer, Subscriber

ROOT = "penguin-pipeline"


def upload_execution(
    gcs: FakeGcsServer, bucket: str, path: str, metadata: dict[str, str], *, pushed: bool = True
) -> str:
    """One execution directory: a model file (or only a marker), carrying `metadata`."""
    if pushed:
        gcs.upload(bucket, f"{ROOT}/{path}/saved_model.pb", b"model", metadata)
        gcs.upload(bucket, f"{ROOT}/{path}/variables/variables.index", b"i")
    else:
        gcs.upload(bucket, f"{ROOT}/{path}/", b"", metadata)
    return f"gs://{bucket}/{ROOT}/{path}"


@pytest.fixture(scope="module")
def seeded(gcs_server: FakeGcsServer) -> tuple[str, str, dict[str, str]]:
    """An earlier run, then this run: (bucket, created-at, locations by short name)."""
    bucket = f"artifact-definitions-{uuid.uuid4().hex[:8]}"  # each session its own
    gcs_server.create_bucket(bucket)
    upload_execution(gcs_server, bucket, "Pusher/pushed_model/7", {"blessed": "true"})
    upload_execution(gcs_server, bucket, "Trainer/model/6", {"owner": "team-a"})
    created_at = run_starts_now()
    locations = {
        "trainer39": upload_execution(
            gcs_server, bucket, "Trainer/model/39", {"accuracy": "0.93", "owner": "team-a"}
        ),
        "trainer40": upload_execution(gcs_server, bucket, "Trainer/model/40", {"accuracy": "0.88"}),
        "pusher41": upload_execution(
            gcs_server,
            bucket,
            "Pusher/pushed_model/41",
            {"blessed": "true", "framework": "tensorflow", "note": 'say "hi"'},
        ),
        "eval42": upload_execution(
            gcs_server, bucket, "Evaluator/evaluation/42", {"blessed": "false"}, pushed=False
        ),
    }
    return bucket, created_at, locations


# (name, path, short name of the expected location or None for no match)
DEFINITIONS: list[tuple[str, str, str | None]] = [
    ("plain", "Pusher:pushed_model", "pusher41"),
    ("kfp-operator", "Pusher:pushed_model:0[pushed == 1]", "pusher41"),
    ("string-number", 'Pusher:pushed_model[pushed == "1"]', "pusher41"),
    ("not-pushed", "Evaluator:evaluation:0[pushed == 1]", None),
    ("marker", "Evaluator:evaluation[pushed == 0]", "eval42"),
    ("neq-false", "Pusher:pushed_model[version != 41]", None),
    ("neq-true", "Pusher:pushed_model[version != 7]", "pusher41"),
    ("in", 'Pusher:pushed_model["blessed" in metadata]', "pusher41"),
    ("not-in", 'Trainer:model["blessed" not in metadata]', "trainer39"),
    ("contains", 'Pusher:pushed_model[uri contains "pushed_model/41"]', "pusher41"),
    ("not-contains", 'Pusher:pushed_model[uri not contains "pushed_model/41"]', None),
    ("matches", 'Trainer:model:1[metadata.accuracy matches "^0\\\\.8"]', "trainer40"),
    ("not-matches", "Trainer:model[metadata.accuracy not matches `^0\\.8`]", "trainer39"),
    ("is-empty", "Trainer:model[metadata.owner is empty]", None),
    ("is-not-empty", "Trainer:model[metadata.owner is not empty]", "trainer39"),
    # and binds tighter than or: (false and true) or true
    (
        "and-before-or",
        "Pusher:pushed_model[pushed == 0 and version == 41 or output == pushed_model]",
        "pusher41",
    ),
    # not binds tighter than and: (not true) and false is false; not (true and false) is true
    ("not-before-and", "Pusher:pushed_model[not pushed == 1 and version == 99]", None),
    (
        "parentheses",
        "Pusher:pushed_model[pushed == 0 and (version == 41 or component == Pusher)]",
        None,
    ),
    ("escapes", 'Pusher:pushed_model[metadata.note == `say "hi"`]', "pusher41"),
    ("component-output", "Trainer:model:0[component == Trainer and output == model]", "trainer39"),
    ("bareword", "Pusher:pushed_model[metadata.framework == tensorflow]", "pusher41"),
    ("mlmd-only-property", "Pusher:pushed_model[pushed_version == 1]", None),
    ("missing-metadata", "Pusher:pushed_model[metadata.nope == x]", None),
    ("index-beyond", "Pusher:pushed_model:1", None),
    ("other-output", "Trainer:model:1", "trainer40"),
    ("no-such-component", "Transform:transformed_examples", None),
]

# Why each definition above without a location matched nothing, as the log tells the author.
FALSE = "the filter is false for {}"
NOTHING = {
    "not-pushed": FALSE.format("{eval42}"),
    "neq-false": FALSE.format("{pusher41}"),
    "not-contains": FALSE.format("{pusher41}"),
    "is-empty": FALSE.format("{trainer39}"),
    "not-before-and": FALSE.format("{pusher41}"),
    "parentheses": FALSE.format("{pusher41}"),
    "mlmd-only-property": "unknown selector 'pushed_version': no such property",
    "missing-metadata": FALSE.format("{pusher41}"),
    "index-beyond": "this run has 1 executions of Pusher:pushed_model",
    "no-such-component": "this run has 0 executions of Transform:transformed_examples",
}


def test_every_operator_against_real_gcs_metadata(
    nats_server: NatsServer, gcs: FakeGcsServer, seeded: tuple[str, str, dict[str, str]]
) -> None:
    bucket, created_at, locations = seeded
    definitions = [{"name": name, "path": path} for name, path, _ in DEFINITIONS]
    result = run_handler(
        *base_args("events", nats_server.url),
        f"--pipeline-root=gs://{bucket}/{ROOT}",
        f"--created-at={created_at}",
        "--clock-skew=0",
        "--artifacts=" + json.dumps(definitions),
        "--dry-run",
    )
    assert result.status == 0, result.stderr
    artifacts = json.loads(str(result.dry_run["payload"]))["artifacts"]
    expected = [
        {"name": name, "location": locations[short]}
        for name, _, short in DEFINITIONS
        if short is not None
    ]
    assert artifacts == expected
    for name, path, short in DEFINITIONS:
        if short is None:
            why = NOTHING[name].format(**locations)
            assert f"INFO: artifact definition {name!r} ({path}) matched nothing: {why}\n" in (
                result.stderr
            )


def test_same_name_yaml_file_and_a_failed_run(
    nats_server: NatsServer,
    gcs: FakeGcsServer,
    seeded: tuple[str, str, dict[str, str]],
    tmp_path: Path,
    subject: str,
) -> None:
    bucket, created_at, locations = seeded
    definitions = tmp_path / "artifacts.yaml"
    definitions.write_text(
        "- name: models\n  path: Trainer:model:0\n"
        "- name: models\n  path: Trainer:model:1\n"
        "- name: serving-model\n  path: 'Pusher:pushed_model:0[pushed == 1]'\n"
    )
    failures = json.dumps(json.dumps([{"displayName": "Pusher", "phase": "Failed"}]))
    with Subscriber(nats_server.url, subject) as subscriber:
        result = run_handler(
            *base_args(subject, nats_server.url, status="Failed"),
            f"--pipeline-root=gs://{bucket}/{ROOT}",
            f"--created-at={created_at}",
            "--clock-skew=0",
            f"--artifacts-file={definitions}",
            f"--failures={failures}",
        )
        received = subscriber.wait_for(1)
    assert result.status == 0, result.stderr
    body = json.loads(received[0].data)
    assert body["status"] == "failed"
    assert body["failures"] == [{"displayName": "Pusher", "phase": "Failed"}]
    assert body["artifacts"] == [
        {"name": "models", "location": locations["trainer39"]},
        {"name": "models", "location": locations["trainer40"]},
        {"name": "serving-model", "location": locations["pusher41"]},
    ]


def test_definitions_from_the_environment_without_a_root_match_nothing(
    nats_server: NatsServer,
) -> None:
    env = {"EXIT_HANDLER_ARTIFACTS": "[{name: serving-model, path: 'Pusher:pushed_model'}]"}
    result = run_handler(*base_args("events", nats_server.url), "--dry-run", env=env)
    assert result.status == 0, result.stderr
    assert json.loads(str(result.dry_run["payload"]))["artifacts"] == []
    assert "INFO: no --pipeline-root: 1 artifact definitions match nothing\n" in result.stderr


def test_an_overlapping_component_resolves_to_nothing_and_the_rest_still_resolve(
    gcs: FakeGcsServer,
    seeded: tuple[str, str, dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two Trainer executions in the seconds its one pod ran: another run's is among them."""
    bucket, created_at, locations = seeded
    start, end = parse_timestamp(created_at), datetime.now(UTC) + timedelta(minutes=1)
    lister = RootLister(
        PipelineRoot.parse(f"gs://{bucket}/{ROOT}"),
        window_start=start,
        window_end=end,
        deadline=Deadline(30),
        component_windows={"Trainer": Window(start, end, 1)},
    )
    definitions = [
        parse_definition("models", "Trainer:model"),
        parse_definition("serving-model", "Pusher:pushed_model"),
    ]
    assert resolve(definitions, lister) == [Artifact("serving-model", locations["pusher41"])]
    assert lister.overlapping == {"Trainer"}
    assert [
        r.getMessage()
        for r in caplog.records
        if r.name == "exit_handler.artifacts" and r.levelno == logging.WARNING
    ] == [
        "artifact definition 'models' (Trainer:model) resolves to nothing: another run's "
        "Trainer ran in the same seconds and its executions cannot be told from this run's"
    ]


# (definitions text, what the one error line must say, pointing at the fault)
MALFORMED: list[tuple[str, str]] = [
    ('[{"name": "m", "path": "Pusher"}]', "expected ':' and an output name"),
    ('[{"name": "m", "path": ":pushed_model"}]', "expected the component name at column 1"),
    ('[{"name": "m", "path": "Pusher:"}]', "expected the output name at column 8"),
    ('[{"name": "m", "path": "../etc:passwd"}]', "unexpected '.' in the component name"),
    ('[{"name": "m", "path": "Pusher:pushed/model"}]', "unexpected '/' in the output name"),
    ('[{"name": "m", "path": "Pusher:pushed_model:x"}]', "expected an index from 0 to 9999"),
    ('[{"name": "m", "path": "Pusher:pushed_model:-1"}]', "expected an index from 0 to 9999"),
    ('[{"name": "m", "path": "Pusher:pushed_model:0:1"}]', "unexpected ':' after the index"),
    ('[{"name": "m", "path": "Pusher:pushed_model[pushed == 1"}]', "unbalanced '['"),
    ('[{"name": "m", "path": "Pusher:pushed_model[]"}]', "column 21"),
    ('[{"name": "m", "path": "Pusher:pushed_model[pushed ==]"}]', "expected a value after '=='"),
    ('[{"name": "m", "path": "Pusher:pushed_model[pushed =~ 1]"}]', "column 28"),
    ('[{"name": "m", "path": "Pusher:pushed_model[pushed == 1 and]"}]', "column 36"),
    ('[{"name": "m", "path": "Pusher:pushed_model[(pushed == 1]"}]', "column 21"),
    ('[{"name": "m", "path": "Pusher:pushed_model[pushed == \\"1]"}]', "unterminated string"),
    ('[{"name": "m", "path": "Pusher:pushed_model[uri matches \\"(\\"]"}]', "column 33"),
    ('[{"name": "m", "path": "Pusher:pushed_model[pushed is full]"}]', "column 31"),
    ('[{"name": "m", "path": "P:o[' + "(" * 40 + "pushed == 1" + ")" * 40 + ']"}]', "deep"),
    ('[{"name": "", "path": "Pusher:pushed_model"}]', "'name' is empty"),
    ('[{"name": "m"}]', "missing 'path'"),
    ('[{"name": "m", "path": "P:o", "index": 0}]', "unknown key 'index'"),
    ('{"name": "m", "path": "P:o"}', "expected a list of {name, path} mappings"),
    ("- !!python/object/apply:os.system ['true']", "YAML tags are not supported"),
    ("- &a {name: m, path: 'P:o'}\n- *a", "anchors and aliases are not supported"),
    ("[{name: m, path: 'P:o'}", "not valid JSON or YAML"),
]


@pytest.mark.parametrize(("text", "fault"), MALFORMED)
def test_malformed_definitions_exit_2_before_anything_is_published(
    nats_server: NatsServer, subject: str, text: str, fault: str
) -> None:
    with Subscriber(nats_server.url, subject) as subscriber:
        result = run_handler(*base_args(subject, nats_server.url), f"--artifacts={text}")
        received = subscriber.wait_for(1, timeout=0.3)
    assert result.status == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("exit-handler: ERROR: bad input: --artifacts: ")
    assert fault in lines[0]
    assert received == []
