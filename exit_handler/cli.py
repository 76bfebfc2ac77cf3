"""The `exit-handler` command: parse, run, and map every outcome to an exit status.

`main` does no work of its own (the model is HTTPie's `core.main`): tests call it with
their own argv, environment and streams.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TextIO

from exit_handler import logs
from exit_handler.deadline import Deadline
from exit_handler.errors import BadInput, ExitHandlerError, ExitStatus
from exit_handler.options import (
    Parser,
    add_delivery_options,
    add_publish_options,
    read_delivery,
    read_options,
    read_timeout,
    with_environment,
)

log = logging.getLogger(__name__)
LOG_FORMATS = ("text", "json")


@dataclass
class Context:
    """The process's surroundings, passed in so that tests can fake them."""

    environ: Mapping[str, str]
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    debug: bool = False


def build_parser() -> Parser:
    parser = Parser(
        prog="exit-handler",
        description="The run-completion exit handler for ML pipelines on Argo Workflows.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    publish = commands.add_parser(
        "publish",
        help="publish the run-completion event (the WorkflowTemplate's step)",
        description="Publish one run-completion CloudEvent on NATS. Every option can also "
        "come from EXIT_HANDLER_<OPTION>, e.g. EXIT_HANDLER_NATS_URL.",
        allow_abbrev=False,
    )
    add_publish_options(publish)
    publish.set_defaults(command_parser=publish, run=_publish)
    inject = commands.add_parser(
        "inject",
        help="wire the exit handler into a compiled pipeline (Argo Workflow YAML)",
        description="Set spec.onExit of a compiled Argo Workflow to call the exit handler's "
        "WorkflowTemplate; an existing onExit keeps running beside it. The exit step reads the "
        "Workflow object (its service account may get and patch workflows); --from-variables "
        "passes the run as template variables instead.",
        allow_abbrev=False,
    )
    inject.add_argument("workflow", metavar="IN.yaml", help="the compiled workflow, - for stdin")
    inject.add_argument("-o", "--output", metavar="OUT.yaml", help="default: stdout")
    inject.add_argument(
        "--artifact", action="append", default=[], metavar="NAME=PATH", help="repeatable"
    )
    inject.add_argument(
        "--from-variables",
        action="store_true",
        help="pass the run as template variables: for service accounts that may not get workflows",
    )
    inject.add_argument(
        "--output-parameter",
        action="append",
        default=[],
        metavar="NAME",
        help="with --from-variables: a global output that every run produces (repeatable)",
    )
    inject.add_argument("--pipeline-root", help="when the workflow has no pipeline-root parameter")
    inject.add_argument("--provider", help="the event's provider and source, default kfp")
    inject.add_argument("--workflow-template", default="kfp-exit-handler")
    inject.add_argument("--template", default="publish")
    inject.add_argument(
        "--cluster-scope", action="store_true", help="call the ClusterWorkflowTemplate"
    )
    inject.add_argument(
        "--continue-on-failure",
        action="store_true",
        help="a publishing failure does not change the run's status",
    )
    inject.add_argument("--debug", action="store_true", help="tracebacks on errors")
    inject.set_defaults(run=_inject)
    replay = commands.add_parser(
        "replay",
        help="send the events publish logged as unpublished",
        description="Find the events that `publish` logged as unpublished (exit 3 or 4) in its "
        "log, text or JSON, or read one message object as --dry-run prints it, and deliver "
        "each with its original id, headers and payload under publish's delivery rules.",
        allow_abbrev=False,
    )
    replay.add_argument("input", nargs="?", default="-", metavar="FILE|-", help="default: stdin")
    add_delivery_options(replay)
    replay.set_defaults(command_parser=replay, run=_replay)
    schema = commands.add_parser(
        "schema",
        help="print the event's JSON Schema (draft 2020-12)",
        description="Print the JSON Schema of the event data, or with --mode of the whole "
        "event as it travels in that content mode. No network, no settings.",
        allow_abbrev=False,
    )
    schema.add_argument(
        "--mode",
        choices=("binary", "structured"),
        help="binary: the NATS headers and the data; structured: the CloudEvent JSON",
    )
    schema.set_defaults(run=_schema)
    return parser


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Run the command; return its exit status (README, Running it)."""
    context = Context(
        environ=os.environ if environ is None else environ,
        stdin=stdin or sys.stdin,
        stdout=stdout or sys.stdout,
        stderr=stderr or sys.stderr,
    )
    logs.configure(context.environ.get("EXIT_HANDLER_LOG_FORMAT") or "text", context.stderr)
    try:
        args = build_parser().parse_args(argv)
        args.run(args, context)
    except ExitHandlerError as err:
        log.error("%s", err)
        if context.debug:
            traceback.print_exc(file=context.stderr)
        return err.status
    except BrokenPipeError:  # the reader went away (`| head`): not a bug, nothing to add
        log.error("stdout was closed before the output was written")
        return ExitStatus.ERROR
    except Exception as err:  # a bug: say so in one line, trace only on request
        log.error("internal error (a bug, please report it): %s: %s", type(err).__name__, err)
        if context.debug:
            traceback.print_exc(file=context.stderr)
        return ExitStatus.ERROR
    return ExitStatus.SUCCESS


def _publish(args: argparse.Namespace, context: Context) -> None:
    values = with_environment(args.command_parser, args, context.environ)
    context.debug = bool(values.get("debug"))
    logs.configure(_log_format(values.get("log_format")), context.stderr)
    deadline = Deadline(read_timeout(values))
    workflow = kube = None
    if values.get("workflow"):
        from exit_handler.workflow import fetch

        values, workflow, kube = fetch(values, vars(args), context.environ, deadline)
    options = replace(read_options(values, context.environ), workflow=workflow, kube=kube)
    from exit_handler.publish import publish

    publish(options, stdout=context.stdout, deadline=deadline)


def _inject(args: argparse.Namespace, context: Context) -> None:
    from exit_handler.inject import (
        InjectOptions,
        check_names,
        inject,
        parse_artifact,
        read_workflow,
        write_workflow,
    )

    context.debug = args.debug
    options = InjectOptions(
        workflow_template=args.workflow_template,
        template=args.template,
        cluster_scope=args.cluster_scope,
        provider=args.provider or None,
        pipeline_root=args.pipeline_root or None,
        artifacts=tuple(parse_artifact(text, n) for n, text in enumerate(args.artifact, 1)),
        output_parameters=tuple(args.output_parameter),
        continue_on_failure=args.continue_on_failure,
        from_variables=args.from_variables,
    )
    check_names(options, args.output_parameter)
    workflow = read_workflow(args.workflow, context.stdin)
    write_workflow(inject(workflow, options), args.output, context.stdout)


def _replay(args: argparse.Namespace, context: Context) -> None:
    values = with_environment(args.command_parser, args, context.environ)
    context.debug = bool(values.get("debug"))
    logs.configure(_log_format(values.get("log_format")), context.stderr)
    nats, timeout = read_delivery(values, context.environ)
    from exit_handler.replay import MAX_INPUT, find_messages, replay

    source = "stdin" if args.input == "-" else args.input
    try:
        if args.input == "-":
            text = context.stdin.read(MAX_INPUT + 1)
        else:
            with open(args.input, encoding="utf-8") as file:
                text = file.read(MAX_INPUT + 1)
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(f"bad input: {source}: {err}") from None
    if len(text) > MAX_INPUT:
        raise BadInput(f"bad input: {source}: over {MAX_INPUT} characters")
    replay(find_messages(text, source), nats, timeout)


def _schema(args: argparse.Namespace, context: Context) -> None:
    import json

    from exit_handler.schema import schema

    json.dump(schema(args.mode), context.stdout, indent=2, ensure_ascii=False)
    context.stdout.write("\n")


def _log_format(value: str | None) -> str:
    """Checked before the other options, so that their errors log in the chosen format."""
    if value not in (None, "", *LOG_FORMATS):
        raise BadInput(f"bad input: --log-format: {str(value)[:20]!r} is not text or json")
    return value or "text"


def run() -> None:
    """The console script's entry point.

    Exits without the interpreter's teardown of ~500 imported modules (40-60 ms with
    nothing to do: the connection is closed, no thread is left) once output is flushed.
    """
    status = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # its reader went away: what is left cannot be delivered
            status = status or ExitStatus.ERROR
    os._exit(status)
