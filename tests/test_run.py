"""Reading Argo's variables: status mapping, failures as Argo really quotes them."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

import pytest
from conftest import run_handler

from exit_handler.errors import InvalidFields
from exit_handler.event import event_id, rfc3339
from exit_handler.run import (
    OUR_STEP,
    WRAPPER,
    Failure,
    RunText,
    decode_failures,
    go_unquote,
    parse_timestamp,
    read_run,
)

ARGO_FAILURES = [
    {
        "displayName": "Trainer",
        "message": "OOMKilled (exit code 137)",
        "templateName": "trainer",
        "phase": "Failed",
        "podName": "penguin-x7k2p-1234",
        "finishedAt": "2026-11-26T10:41:00Z",
    }
]

# Real Go output, committed so that no test needs Go. GO_LITERALS: strconv.Quote (Go 1.26,
# Unicode 15.0) of each value, and the value as Go's encoding/json reads it (a byte that is
# not UTF-8 is U+FFFD). WORKFLOW_FAILURES: {{workflow.failures}} as Argo v3.4.17's
# operator.go builds it, json.Marshal then strconv.Quote, for four failed nodes (json.Marshal
# escapes the control characters first; \x7f and \U0001fae9 are strconv.Quote's). ARGO_CUTS:
# Argo's own `{{=sprig.trunc(N, workflow.failures)}}` (util/template) at each N that splits a
# character: the first N - K bytes, then K times U+FFFD.
GO_LITERALS = [
    ('"\\x1b[31mTrainer failed\\x1b[0m"', "\x1b[31mTrainer failed\x1b[0m"),
    (
        '"bell\\a vt\\v ff\\f bs\\b nul\\x00 del\\x7f"',
        "bell\x07 vt\x0b ff\x0c bs\x08 nul\x00 del\x7f",
    ),
    (
        '"bad \\xff\\xfe bytes, a cut \\xe2\\x82 euro, a whole € one"',
        "bad \ufffd\ufffd bytes, a cut \ufffd\ufffd euro, a whole € one",
    ),
    ('"café, Grüße, 日本語"', "café, Grüße, 日本語"),
    ('"line\\u2028separator\\u2029paragraph"', "line\u2028separator\u2029paragraph"),
    ('"emoji 😀 and a newer one \\U0001fae9"', "emoji 😀 and a newer one \U0001fae9"),
    (
        '"quote \\" backslash \\\\ tab \\t newline \\n return \\r"',
        'quote " backslash \\ tab \t newline \n return \r',
    ),
    (
        '"private \\ue000 \\U000f0000 zero-width \\u200b bom \\ufeff next-line \\u0085"',
        "private \ue000 \U000f0000 zero-width \u200b bom \ufeff next-line \x85",
    ),
    ('"max \\U0010ffff, byte \\x80, del \\x7f"', "max \U0010ffff, byte \ufffd, del \x7f"),
]
WORKFLOW_FAILURES = (
    '"[{\\"displayName\\":\\"Trainer\\",'
    '\\"message\\":\\"\\\\u001b[31mOOMKilled\\\\u001b[0m (exit code 137)\\",'
    '\\"templateName\\":\\"trainer\\",\\"phase\\":\\"Failed\\",'
    '\\"podName\\":\\"penguin-x7k2p-trainer-1849502734\\",'
    '\\"finishedAt\\":\\"2026-11-26T10:41:00Z\\"},'
    '{\\"displayName\\":\\"Evaluator\\",'
    '\\"message\\":\\"metric below threshold\\\\u0007\\\\u000b: del \\x7f,'
    ' bad \\\\ufffd byte\\",\\"templateName\\":\\"evaluator\\",'
    '\\"phase\\":\\"Failed\\",\\"podName\\":\\"penguin-x7k2p-evaluator-2214\\",'
    '\\"finishedAt\\":\\"2026-11-26T10:41:00Z\\"},'
    '{\\"displayName\\":\\"Pusher\\",'
    '\\"message\\":\\"café ☃ 😀 \\U0001fae9 line\\\\u2028sep \\\\u003cb\\\\u003e\\\\'
    'u0026amp;\\\\u003c/b\\\\u003e zw\\u200bsp\\",'
    '\\"templateName\\":\\"pusher\\",\\"phase\\":\\"Error\\",'
    '\\"podName\\":\\"penguin-x7k2p-pusher-77\\",'
    '\\"finishedAt\\":\\"2026-11-26T10:41:00Z\\"},'
    '{\\"displayName\\":\\"publish-run-completion(0)\\",'
    '\\"message\\":\\"pod deleted\\",\\"templateName\\":\\"\\",'
    '\\"phase\\":\\"Error\\",\\"podName\\":\\"penguin-x7k2p-publish-9\\",'
    '\\"finishedAt\\":null}]"'
)
ARGO_CUTS = {529: 0, 530: 1, 532: 0, 533: 1, 534: 2, 536: 0, 537: 1, 538: 2, 539: 3, 931: 0}
WORKFLOW_ENTRIES = [
    Failure(
        "Trainer",
        "trainer",
        "Failed",
        "\x1b[31mOOMKilled\x1b[0m (exit code 137)",
        "2026-11-26T10:41:00Z",
    ),
    Failure(
        "Evaluator",
        "evaluator",
        "Failed",
        "metric below threshold\a\v: del \x7f, bad \ufffd byte",
        "2026-11-26T10:41:00Z",
    ),
    Failure(
        "Pusher",
        "pusher",
        "Error",
        "café ☃ 😀 \U0001fae9 line\u2028sep <b>&amp;</b> zw\u200bsp",
        "2026-11-26T10:41:00Z",
    ),
    Failure(f"{OUR_STEP}(0)", "", "Error", "pod deleted"),
]


# `exit-handler publish` for a failed run, before its failures.
FAILED_RUN = (
    "publish",
    "--status=Failed",
    "--workflow-name=penguin-pipeline-x7k2p",
    "--workflow-uid=uid-1",
    "--pipeline-name=penguin-pipeline",
)


def argo_cut(text: str, limit: int) -> str:
    """What Argo passes for `{{=sprig.trunc(limit, …)}}`: sprig keeps `limit` bytes, and
    json.Marshal writes each byte of a character it split as U+FFFD."""
    kept = text.encode()[:limit].decode("utf-8", "surrogateescape")
    return re.sub("[\udc80-\udcff]", "\ufffd", kept)


def run_text(**overrides: str | None) -> RunText:
    fields: dict[str, str | None] = {
        "status": "Succeeded",
        "pipeline_name": "penguin-pipeline",
        "workflow_name": "penguin-pipeline-x7k2p",
        "workflow_uid": "0f5d-uid",
    }
    fields.update(overrides)
    return RunText(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argo", "event"), [("Succeeded", "succeeded"), ("Failed", "failed"), ("Error", "failed")]
)
def test_final_statuses_map_to_the_two_event_statuses(argo: str, event: str) -> None:
    assert read_run(run_text(status=argo)).status == event


def test_failures_quoted_twice_as_argo_passes_them() -> None:
    twice = json.dumps(json.dumps(ARGO_FAILURES))
    assert decode_failures(twice) == (
        [
            Failure(
                "Trainer", "trainer", "Failed", "OOMKilled (exit code 137)", "2026-11-26T10:41:00Z"
            )
        ],
        False,
    )


def test_failures_quoted_once_are_accepted_too() -> None:
    assert decode_failures(json.dumps(ARGO_FAILURES)).entries[0].display_name == "Trainer"


@pytest.mark.parametrize("none", ["null", '"null"', "", None, "[]", '"[]"'])
def test_no_failures(none: str | None) -> None:
    assert decode_failures(none) == ([], False)


@pytest.mark.parametrize(("quoted", "value"), GO_LITERALS)
def test_go_string_literals_read_as_strconv_unquote_reads_them(quoted: str, value: str) -> None:
    assert go_unquote(quoted) == (value, False)


def test_octal_escapes_read_as_bytes() -> None:
    """strconv.Quote never writes them, but Unquote reads them: Go's own answer is
    "A\\x7f\\x80\\xff", and encoding/json reads each byte that is not UTF-8 as U+FFFD."""
    assert go_unquote('"\\101\\177\\200\\377"') == ("A\x7f\ufffd\ufffd", False)


@pytest.mark.parametrize(
    "literal",
    ['"\\\'"', '"\\q"', '"\\400"', '"\\ud800"', '"\\U00110000"', '"\\x4g"', '"a\nb"', '"a"b'],
)
def test_what_strconv_unquote_refuses_is_refused(literal: str) -> None:
    """An escape of single quotes or of nothing, a byte above 255, a surrogate, a raw newline."""
    with pytest.raises(ValueError, match=r"workflow\.failures"):
        go_unquote(literal)


@pytest.mark.parametrize(
    ("literal", "reason"),
    [
        ('"\\ud800"', "\\ud800 is no Unicode character"),
        ('"\\udfff"', "\\udfff is no Unicode character"),
        ('"\\U00110000"', "\\U00110000 is no Unicode character"),
        ('"\\400"', "octal escape \\400 is above 255"),
        ("x", "not a quoted string"),
        ('"a"b', 'invalid Go string literal at character 2: "\\"b"'),
        (
            '"a"bcdefghijklmnopq',
            'invalid Go string literal at character 2: "\\"bcdefghijkl"',
        ),
        ('"a\ud800"', "not valid Unicode"),
        ('"a"\f', 'invalid Go string literal at character 2: "\\"\\f"'),
    ],
)
def test_a_refused_literal_is_reported_with_the_escape_at_fault(literal: str, reason: str) -> None:
    message = f"not the JSON that {{{{workflow.failures}}}} gives ({reason})"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        go_unquote(literal)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("x", "Expecting value"),  # neither JSON nor a quoted string
        ('\f"[]"', "Expecting value"),  # a form feed is not JSON's whitespace, outside
        ('"\\f"', "Expecting value"),  # nor inside the quotes
        ('"[] x"', "Extra data"),
        ("[" * 100_000, "nested too deeply"),
        ('"' + "[" * 100_000 + '"', "nested too deeply"),
    ],
    ids=["not-quoted", "form-feed-outside", "form-feed", "extra-data", "deep-outer", "deep-inner"],
)
def test_a_whole_list_that_is_not_json_is_refused_with_the_reason(text: str, reason: str) -> None:
    message = f"not the JSON that {{{{workflow.failures}}}} gives ({reason})"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        decode_failures(text)


def test_json_whitespace_may_follow_the_closing_quote() -> None:
    assert go_unquote('"a" \t\r\n') == ("a", False)


def test_workflow_failures_with_escapes_json_does_not_know() -> None:
    """A DEL or a character newer than Argo's Go in a message once lost the event (exit 2)."""
    assert decode_failures(WORKFLOW_FAILURES) == (WORKFLOW_ENTRIES, False)


def test_a_cut_list_keeps_exactly_the_entries_that_arrived_whole() -> None:
    """Inject's bound may cut anywhere: inside an escape, a character, a key, a value."""
    quoted = WORKFLOW_FAILURES.encode()
    for limit, replaced in ARGO_CUTS.items():  # the emulation below is Argo's behaviour
        assert argo_cut(WORKFLOW_FAILURES, limit) == (
            quoted[: limit - replaced].decode() + "\ufffd" * replaced
        )
    ends = [match.end() for match in re.finditer(rb'\}(?=,\{\\"displayName|\]"$)', quoted)]
    assert len(ends) == len(WORKFLOW_ENTRIES)
    closed = quoted.rindex(b"]") + 1
    for limit in range(1, len(quoted) + 1):
        decoded = decode_failures(argo_cut(WORKFLOW_FAILURES, limit))
        whole = sum(end <= limit for end in ends)
        assert decoded == (WORKFLOW_ENTRIES[:whole], limit < closed), limit
    # What follows the whole entries must be what a cut leaves of one.
    for bad, reason in (
        ('"[{\\"a\\":\\"b\\"},xyz', "entry 2: Expecting value"),  # garbage between entries
        ('"[{\\"a\\":\\"b\\"}{', "expected ',' after entry 1"),
        # A number: Go writes a failed node's values as strings or null.
        ('"[{\\"a\\":1', "entry 1: Expecting ',' delimiter"),
        ('"{\\"a\\":', "expected a list"),
        ('"[{\\"a\\":\\"\\\\q', "entry 1: Invalid \\escape"),
        ('"[' + "[" * 100_000, "nested too deeply"),
    ):
        message = f"not the JSON that {{{{workflow.failures}}}} gives ({reason})"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            decode_failures(bad)


def test_a_cut_list_is_published_with_a_warning_that_says_what_was_kept() -> None:
    cut = argo_cut(WORKFLOW_FAILURES, 600)  # inside the third entry
    result = run_handler(*FAILED_RUN, f"--failures={cut}", "--dry-run")
    assert result.status == 0, result.stderr
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("exit-handler: WARNING: ")
    assert "cut at the size bound" in warning
    assert "kept the 2 failed nodes that arrived whole" in warning
    payload = json.loads(str(result.dry_run["payload"]))
    assert [failure["displayName"] for failure in payload["failures"]] == ["Trainer", "Evaluator"]


def test_every_cut_of_one_run_gives_one_id_and_a_whole_list_another() -> None:
    """Each exit pod attempt may keep another subset of a cut list (Argo walks a Go map)."""

    def id_of(failures: str) -> str:
        return event_id(read_run(run_text(status="Failed", failures=failures)))

    early, late = id_of(argo_cut(WORKFLOW_FAILURES, 600)), id_of(argo_cut(WORKFLOW_FAILURES, 800))
    assert early == late
    assert id_of(WORKFLOW_FAILURES) != early


def test_exit_handler_own_nodes_are_not_failures_of_the_run() -> None:
    """The onExit wrapper, and each attempt of our step: before Argo 3.5 its templateName is
    empty (a templateRef step), from 3.5 it is the referenced template's."""
    own = [
        {"displayName": "penguin-x7k2p.onExit", "templateName": WRAPPER, "phase": "Failed"},
        {"displayName": f"{OUR_STEP}(0)", "templateName": "", "phase": "Error"},
        {"displayName": f"{OUR_STEP}(1)", "templateName": "publish", "phase": "Error"},
        {"displayName": OUR_STEP, "templateName": "publish", "phase": "Failed"},
    ]
    failures = json.dumps(json.dumps([*ARGO_FAILURES, *own]))
    run = read_run(run_text(status="Failed", failures=failures))
    assert [failure.template_name for failure in run.failures] == ["trainer"]


def test_a_pipeline_template_named_publish_stays_a_failure_and_counts_in_the_id() -> None:
    """`--exit-templates` once always held `publish`: a pipeline's own step vanished."""
    theirs = {
        "displayName": "publish",
        "templateName": "publish",
        "phase": "Failed",
        "message": "Error (exit code 1)",
    }
    ours = {"displayName": f"{OUR_STEP}(0)", "templateName": "", "phase": "Error"}
    run = read_run(run_text(status="Failed", failures=json.dumps(json.dumps([theirs, ours]))))
    assert run.failures == (Failure("publish", "publish", "Failed", "Error (exit code 1)"),)
    without = read_run(run_text(status="Failed", failures=json.dumps(json.dumps([ours]))))
    assert without.failures == ()
    assert event_id(run) != event_id(without)


def test_all_bad_fields_are_named_in_one_error() -> None:
    with pytest.raises(InvalidFields) as caught:
        read_run(run_text(status="Running", workflow_uid="", created_at="yesterday"))
    assert [problem.split(":")[0] for problem in caught.value.problems] == [
        "--status",
        "--workflow-uid",
        "--created-at",
    ]


def test_timestamps_are_rfc3339_with_an_offset() -> None:
    assert parse_timestamp("2026-11-26T10:00:00Z") == datetime(2026, 11, 26, 10, tzinfo=UTC)
    assert parse_timestamp("2026-11-26T12:00:00.123456789+02:00") == datetime(
        2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC
    )
    for bad in ("2026-11-26", "2026-11-26T10:00:00", "2026-13-01T00:00:00Z", "{{x}}"):
        with pytest.raises(ValueError, match=r"RFC 3339|valid|unresolved"):
            parse_timestamp(bad)


def test_timestamps_are_utc_whatever_the_pods_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The event prints UTC wall-clock time with `Z`: a pod with `TZ` set must not shift it."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        parsed = parse_timestamp("2026-11-26T12:00:00+02:00")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert rfc3339(parsed) == "2026-11-26T10:00:00Z"


def test_an_unresolved_argo_variable_is_named_as_such() -> None:
    """A template that forgot to substitute the timestamp is told so, not "bad format"."""
    message = '"{{workflow.creationTimestamp}}" is an unresolved Argo variable'
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_timestamp("{{workflow.creationTimestamp}}")


@pytest.mark.parametrize(
    ("value", "shown"),
    [("7" * 60, '"' + "7" * 60 + '"'), ("7" * 61, '"' + "7" * 60 + '\\u2026"')],
    ids=["60-whole", "61-cut"],
)
def test_a_bad_value_is_shown_up_to_60_characters(value: str, shown: str) -> None:
    message = f"{shown} is not an RFC 3339 timestamp like 2026-11-26T10:00:00Z"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_timestamp(value)


def test_other_exit_templates_can_be_named() -> None:
    """Without inject, whoever calls the WorkflowTemplate names its own nodes."""
    attempt = {"displayName": "notify(0)", "templateName": "", "phase": "Error"}
    text = run_text(status="Failed", failures=json.dumps(json.dumps([*ARGO_FAILURES, attempt])))
    assert len(read_run(text).failures) == 2
    wired = RunText(**{**text.__dict__, "exit_templates": ("notify",)})
    assert [failure.display_name for failure in read_run(wired).failures] == ["Trainer"]
    # The same from the command line.
    failures = "--failures=" + json.dumps(json.dumps([*ARGO_FAILURES, attempt]))
    for extra, names in (
        ((), ["Trainer", "notify(0)"]),
        (("--exit-templates=notify",), ["Trainer"]),
    ):
        result = run_handler(*FAILED_RUN, failures, *extra, "--dry-run")
        assert result.status == 0, result.stderr
        payload = json.loads(str(result.dry_run["payload"]))
        assert [failure["displayName"] for failure in payload["failures"]] == names


def test_a_user_step_displayed_like_an_exit_template_stays_a_failure() -> None:
    step = {"displayName": "publish", "templateName": "publish-model", "phase": "Failed"}
    run = read_run(run_text(status="Failed", failures=json.dumps(json.dumps([step]))))
    assert [failure.template_name for failure in run.failures] == ["publish-model"]
