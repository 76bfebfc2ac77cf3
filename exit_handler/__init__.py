"""The run-completion exit handler for ML pipelines on Argo Workflows."""
