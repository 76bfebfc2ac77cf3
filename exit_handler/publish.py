"""`exit-handler publish`: read the run, find its artifacts, build the event, send it.

Data flows one way: options (validated, artifact definitions parsed) → pipeline-root
listing → artifacts → event → wire message → delivery. Bad input is rejected before
anything is listed or sent.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import TextIO

from exit_handler.artifacts import resolve, serving_model_artifacts
from exit_handler.deadline import Deadline
from exit_handler.delivery import deliver
from exit_handler.errors import Refused, Unavailable
from exit_handler.event import build_event, event_data, event_id
from exit_handler.options import Options
from exit_handler.pipeline_root import RootLister
from exit_handler.replay import UNPUBLISHED
from exit_handler.run import MAX_FAILURES_IN_EVENT
from exit_handler.wire import Message, encode, fit

log = logging.getLogger(__name__)


def publish(options: Options, *, stdout: TextIO, observed_at: datetime | None = None) -> None:
    """Publish (or with --dry-run print) the run-completion event of `options.run`."""
    deadline = Deadline(options.timeout)
    observed_at = observed_at or datetime.now(UTC).replace(microsecond=0)
    run = options.run
    lister = None
    if options.root is not None and run.created_at is not None:
        skew = timedelta(seconds=options.clock_skew)
        lister = RootLister(
            options.root,
            window_start=run.created_at - skew,
            window_end=datetime.now(UTC) + skew,
            deadline=deadline,
        )
    serving = serving_model_artifacts(run, lister, options.pusher_components)
    artifacts = resolve(options.artifacts, lister)

    def render(failure_limit: int) -> Message:
        data = event_data(
            run,
            provider=options.provider,
            observed_at=observed_at,
            serving_model_artifacts=serving,
            artifacts=artifacts,
            failure_limit=failure_limit,
        )
        event = build_event(run, data, source=options.provider, observed_at=observed_at)
        return encode(event, options.nats.subject, options.content_mode)

    if options.dry_run:
        stdout.write(json.dumps(render(MAX_FAILURES_IN_EVENT).to_json(), ensure_ascii=False))
        stdout.write("\n")
        return
    try:
        receipt = deliver(
            options.nats,
            lambda max_payload: fit(render, max_payload, MAX_FAILURES_IN_EVENT),
            deadline,
        )
    except (Unavailable, Refused):
        replay = json.dumps(render(MAX_FAILURES_IN_EVENT).to_json(), ensure_ascii=False)
        log.error("%s%s", UNPUBLISHED, replay)
        raise
    stream = f", stream {receipt.stream} seq {receipt.sequence}" if receipt.stream else ""
    duplicate = " (duplicate: already stored)" if receipt.duplicate else ""
    log.info(
        "published %s event %s to %s (%s mode, %s delivery%s)%s",
        run.status,
        event_id(run),
        options.nats.subject,
        options.content_mode,
        receipt.delivery,
        stream,
        duplicate,
    )
