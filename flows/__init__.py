"""Prefect flows composing the tasks, the CLI, and the deployments (`prefect.yaml`)."""
