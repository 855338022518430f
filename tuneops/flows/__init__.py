"""Prefect orchestration over `tuneops.steps`: thin tasks, one flow per job."""

from tuneops import quiet

quiet.apply()
