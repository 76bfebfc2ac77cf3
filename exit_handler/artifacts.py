"""Which artifacts the event names: this run's pushed models (SPEC §3.4)."""

from __future__ import annotations

from exit_handler.event import Artifact
from exit_handler.pipeline_root import RootLister, pushed_versions
from exit_handler.run import Run

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
