"""`python -m exit_handler` is the `exit-handler` command."""

from exit_handler.cli import run

run()
