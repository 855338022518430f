"""What the reliability tests share: a registry with a champion to watch, tree hashes, the
CLI run in-process with its output captured, and the record each case leaves for
docs/reliability.md (tests/reliability/table.py reads it from pytest's JUnit XML)."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import prefect_console_to, store_client
from tuneops.cli import main as cli_main

TEXT_MODEL = "tuneops-movie-sentiment"
NER_MODEL = "tuneops-atis-slots"


def tree_hash(*paths: Path) -> str:
    """sha256 over every file's relative name and bytes under `paths` (files or folders)."""
    digest = hashlib.sha256()
    for top in paths:
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in files:
            if path.exists():
                digest.update(str(path.relative_to(top.parent)).encode() + b"\0")
                digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Registry:
    uri: str

    def state(self) -> dict[str, Any]:
        """Every registered model's versions and aliases, and the number of runs."""
        client = store_client(self.uri)
        models = {
            m.name: {
                "versions": sorted(
                    v.version for v in client.search_model_versions(f"name='{m.name}'")
                ),
                "aliases": dict(m.aliases),
            }
            for m in client.search_registered_models()
        }
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = len(client.search_runs(experiments)) if experiments else 0
        return {"models": models, "runs": runs}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A real MLflow SQLite store whose two models each have a v1 champion."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = store_client(uri)
    for name in (TEXT_MODEL, NER_MODEL):
        client.create_registered_model(name)
        version = client.create_model_version(name, source=(folder / name).as_uri())
        client.set_registered_model_alias(name, "champion", version.version)
    return Registry(uri)


@dataclass(frozen=True)
class CliRun:
    exit_code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The CLI's own error report: from its `tuneops: ` line to the end."""
        err = "\n" + self.err
        start = err.rfind("\ntuneops: ")
        return err[start + 1 :].strip() if start >= 0 else ""


def run_cli(capfd: pytest.CaptureFixture[str], *argv: str) -> CliRun:
    """`tuneops ARGV` in this process (its real entry point); stdout and stderr as the
    user sees them, Prefect's and the libraries' log lines included."""
    capfd.readouterr()
    with prefect_console_to(sys.stderr):
        code = cli_main(list(argv))
    out, err = capfd.readouterr()
    return CliRun(code, out, err)


def record(
    record_property: Any, kind: str, case: str, outcome: str, detail: str, **extra: Any
) -> None:
    """One row of the reliability table, as a JUnit property of this test."""
    row = {"kind": kind, "case": case, "outcome": outcome, "detail": detail} | extra
    record_property("reliability", json.dumps(row, ensure_ascii=False))
