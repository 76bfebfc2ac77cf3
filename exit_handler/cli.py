"""The `exit-handler` command: parse, run, and map every outcome to an exit status.

`main` does no work of its own (the model is HTTPie's `core.main`): tests call it with
their own argv, environment and streams.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import TextIO

from exit_handler import logs
from exit_handler.errors import BadInput, ExitHandlerError, ExitStatus
from exit_handler.options import Parser, add_publish_options, read_options, with_environment

log = logging.getLogger(__name__)
LOG_FORMATS = ("text", "json")


def build_parser() -> Parser:
    parser = Parser(
        prog="exit-handler",
        description="Publish the run-completion CloudEvent of a finished Argo workflow.",
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
    publish.set_defaults(command_parser=publish)
    return parser


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the command; return its exit status (SPEC §6)."""
    environ = os.environ if environ is None else environ
    stdout = stdout or sys.stdout
    logs.configure(environ.get("EXIT_HANDLER_LOG_FORMAT") or "text", stderr or sys.stderr)
    debug = False
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        values = with_environment(args.command_parser, args, environ)
        debug = bool(values.get("debug"))
        logs.configure(_log_format(values.get("log_format")), stderr or sys.stderr)
        options = read_options(values, environ)
        from exit_handler.publish import publish

        publish(options, stdout=stdout)
    except ExitHandlerError as err:
        log.error("%s", err)
        if debug:
            traceback.print_exc(file=stderr or sys.stderr)
        return err.status
    except Exception as err:  # a bug: say so in one line, trace only on request
        log.error("internal error (a bug, please report it): %s: %s", type(err).__name__, err)
        if debug:
            traceback.print_exc(file=stderr or sys.stderr)
        return ExitStatus.ERROR
    return ExitStatus.SUCCESS


def _log_format(value: str | None) -> str:
    """Checked before the other options, so that their errors log in the chosen format."""
    if value not in (None, "", *LOG_FORMATS):
        raise BadInput(f"bad input: --log-format: {str(value)[:20]!r} is not text or json")
    return value or "text"


def run() -> None:
    """The console script's entry point."""
    sys.exit(main())
