"""The pipeline steps as plain functions: config and paths in, a typed result out.

No Prefect and no tracking-server imports here; `tuneops.stages` and `flows`
decide where results go and what gets logged.
"""
