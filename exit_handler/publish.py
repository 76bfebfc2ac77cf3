"""`exit-handler publish`: read the run, find its artifacts, build the event, send it.

Data flows one way: options (validated, artifact definitions parsed) → pipeline-root
listing → artifacts → event → wire message → delivery. Bad input is rejected before
anything is listed or sent.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TextIO

from exit_handler.artifacts import resolve, serving_model_artifacts
from exit_handler.deadline import Deadline
from exit_handler.delivery import deliver
from exit_handler.errors import ExitHandlerError, Refused, Unavailable
from exit_handler.event import build_event, event_data, event_id
from exit_handler.options import Options
from exit_handler.pipeline_root import RootLister, Window
from exit_handler.replay import UNPUBLISHED
from exit_handler.run import MAX_FAILURES_IN_EVENT
from exit_handler.wire import Message, encode, fit
from exit_handler.workflow import PUBLISHED, WorkflowRun, node_name

if TYPE_CHECKING:
    from exit_handler.kube import KubeClient

log = logging.getLogger(__name__)


def publish(
    options: Options,
    *,
    stdout: TextIO,
    observed_at: datetime | None = None,
    deadline: Deadline | None = None,
) -> None:
    """Publish (or with --dry-run print) the run-completion event of `options.run`."""
    deadline = deadline or Deadline(options.timeout)
    observed_at = observed_at or datetime.now(UTC).replace(microsecond=0)
    run = options.run
    workflow = options.workflow
    if workflow and workflow.published == event_id(run) and not options.dry_run:
        log.info(
            "workflow %s/%s is labelled %s=%s: this event was published; nothing to do",
            workflow.namespace,
            workflow.name,
            PUBLISHED,
            workflow.published,
        )
        return
    lister = None
    if options.root is not None and run.created_at is not None:
        skew = timedelta(seconds=options.clock_skew)
        lister = RootLister(
            options.root,
            window_start=run.created_at - skew,
            window_end=datetime.now(UTC) + skew,
            deadline=deadline,
            component_windows=_component_windows(options, skew),
        )
    serving = serving_model_artifacts(run, lister, options.pusher_components)
    artifacts = resolve(options.artifacts, lister)
    overlapping = sorted(lister.overlapping) if lister else []

    def render(failure_limit: int) -> Message:
        data = event_data(
            run,
            provider=options.provider,
            observed_at=observed_at,
            serving_model_artifacts=serving,
            artifacts=artifacts,
            overlapping=overlapping,
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
    if workflow and options.kube:
        _mark_published(options.kube, workflow, event_id(run))


def _component_windows(options: Options, skew: timedelta) -> dict[str, Window]:
    """Where the Workflow object tells when a component's node ran, its own window.

    A component that ran no pod in this run (a run stopped before it, a failed step before
    it) wrote nothing in it: its window is empty, whatever other runs wrote meanwhile.
    """
    if options.workflow is None:
        return {}
    components = dict.fromkeys(
        [*options.pusher_components, *(d.component for d in options.artifacts)]
    )
    intervals = options.workflow.intervals(components)
    now = datetime.now(UTC)
    # Kubernetes writes whole seconds, cut down: a node that ended at :10.7 says :10.
    second = timedelta(seconds=1)
    windows = {}
    for component in components:
        interval = intervals.get(component)
        if interval is None:
            log.info(
                "no pod of %s (a node named %s) ran in workflow %s: it wrote nothing in this run",
                component,
                node_name(component),
                options.workflow.name,
            )
            windows[component] = Window(now, now, 0)
        else:
            end = (interval.end or now) + second + skew
            windows[component] = Window(interval.start - skew, end, interval.attempts)
    return windows


def _mark_published(kube: KubeClient, workflow: WorkflowRun, event: str) -> None:
    """Label the Workflow so that the backstop leaves it alone; the event is out already."""
    try:
        kube.label_workflow(workflow.namespace, workflow.name, {PUBLISHED: event}, Deadline(10))
    except ExitHandlerError as err:
        log.warning(
            "published, but could not label workflow %s/%s %s (%s): the backstop may "
            "publish it again, with the same id",
            workflow.namespace,
            workflow.name,
            PUBLISHED,
            err,
        )
