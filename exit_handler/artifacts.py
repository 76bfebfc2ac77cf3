"""Which artifacts the event names (README).

`servingModelArtifacts` lists every pushed model version of this run (deprecated by the
seed, kept); `artifacts` resolves the pipeline author's Run Artifact Definitions against
this run's executions, in the order the README's discovery rules give them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from exit_handler.event import Artifact
from exit_handler.pipeline_root import Execution, RootLister, pushed_versions
from exit_handler.run import Run

if TYPE_CHECKING:
    from exit_handler.artifact_definitions import ArtifactDefinition

log = logging.getLogger(__name__)

PUSHED_MODEL = "pushed_model"


def serving_model_artifacts(
    run: Run, lister: RootLister | None, components: tuple[str, ...]
) -> list[Artifact]:
    """The deprecated `servingModelArtifacts`: each pusher's pushed versions, oldest first."""
    if lister is None:
        return []
    return [
        Artifact(
            f"{run.pipeline_name}:{run.workflow_name}:{component}:{PUSHED_MODEL}:{index}",
            execution.uri,
        )
        for component in components
        for index, execution in enumerate(
            pushed_versions(lister.executions(component, PUSHED_MODEL))
        )
    ]


def resolve(definitions: Sequence[ArtifactDefinition], lister: RootLister | None) -> list[Artifact]:
    """`artifacts`: for each definition, its INDEX-th execution if the filter holds."""
    if definitions and lister is None:
        log.info("no --pipeline-root: %d artifact definitions match nothing", len(definitions))
        return []
    artifacts = []
    for definition in definitions:
        assert lister is not None  # for mypy: checked above whenever there are definitions
        executions = lister.executions(definition.component, definition.output)
        if definition.component in lister.overlapping:
            log.warning(
                "artifact definition %r (%s) resolves to nothing: another run's %s ran in the "
                "same seconds and its executions cannot be told from this run's",
                definition.name,
                definition.path,
                definition.component,
            )
            continue
        if definition.index >= len(executions):
            log.info(
                "artifact definition %r (%s) matched nothing: this run has %d executions of %s:%s",
                definition.name,
                definition.path,
                len(executions),
                definition.component,
                definition.output,
            )
            continue
        execution = executions[definition.index]
        if _matches(definition, execution):
            artifacts.append(Artifact(definition.name, execution.uri))
    return artifacts


def properties(execution: Execution) -> dict[str, object]:
    """What a filter can select: the names kfp-operator's authors already use."""
    return {
        "pushed": int(execution.pushed),
        "version": execution.version,
        "uri": execution.uri,
        "component": execution.component,
        "output": execution.output,
        "metadata": dict(execution.metadata),
    }


def _matches(definition: ArtifactDefinition, execution: Execution) -> bool:
    if definition.filter is None:
        return True
    from exit_handler.artifact_filter import FilterEvaluationError, evaluate

    try:
        matched = evaluate(definition.filter, properties(execution))
    except FilterEvaluationError as err:  # e.g. a property only ML Metadata knows
        log.info(
            "artifact definition %r (%s) matched nothing: %s", definition.name, definition.path, err
        )
        return False
    if not matched:
        log.info(
            "artifact definition %r (%s) matched nothing: the filter is false for %s",
            definition.name,
            definition.path,
            execution.uri,
        )
    return matched
