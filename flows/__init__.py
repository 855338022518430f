"""Prefect orchestration over `tuneops.stages`: thin tasks, one flow per job."""

from tuneops import quiet

quiet.apply()
