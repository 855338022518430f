"""`tuneops ingest` in a real git + DVC repository with a local DVC remote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, preset, run_tool, tool_env, write_params
from tests.reliability.conftest import record
from tuneops import recording, stages
from tuneops.errors import DataValidationError, ExternalToolError

pytestmark = pytest.mark.integration

DATASET = Path("data/raw/movie_sentiment")
CLI = (sys.executable, "-m", "tuneops.cli")


def batch(folder: Path, name: str, tag: str, rows: int = 24) -> Path:
    """A valid new batch: `rows` fresh texts, half of each label."""
    labels = ["positive", "negative"] * (rows // 2)
    texts = [f"{tag} review number {i}, {label} overall" for i, label in enumerate(labels)]
    path = folder / name
    frame = pd.DataFrame({"text": texts, "label": labels})
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.fixture
def project(dvc_project: Path) -> stages.Context:
    """The bundled data fetched, tracked and pushed: data version 1."""
    write_params(dvc_project, {})
    ctx = stages.load_context(dvc_project)
    stages.step_fetch(ctx)
    stages.step_version_data(ctx)
    return ctx


def data_version(ctx: stages.Context) -> str:
    return recording.current_data_version(ctx)


def dvc_status(ctx: stages.Context, *args: str) -> str:
    return run_tool(ctx.paths.root, sys.executable, "-m", "dvc", "status", *args).stdout


def test_a_valid_batch_becomes_an_immutable_batch_file_and_a_new_pushed_version(
    project: stages.Context, tmp_path: Path
) -> None:
    before = data_version(project)
    source = batch(tmp_path, "week-48.jsonl", "fresh")
    result, version = stages.step_ingest(project, source)
    added = project.paths.root / DATASET / "batch-0001.jsonl"
    assert (result.added, result.rows, result.batch_file) == (True, 24, added)
    assert added.read_bytes() == source.read_bytes()
    assert added.stat().st_mode & 0o222 == 0  # read-only
    assert version is not None and version.version == data_version(project) != before
    assert "in sync" in dvc_status(project, "--cloud", "data/raw.dvc")
    assert "up to date" in dvc_status(project, "data/raw.dvc")


def test_ingesting_the_same_file_twice_is_a_no_op_that_says_so(
    project: stages.Context, tmp_path: Path
) -> None:
    source = batch(tmp_path, "week-48.csv", "fresh")
    stages.step_ingest(project, source)
    version = data_version(project)
    cli = subprocess.run(
        [*CLI, "--root", str(project.paths.root), "ingest", str(source)],
        capture_output=True,
        text=True,
        check=False,
        env=tool_env(),
        cwd=REPO,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == (
        f"{source}: already ingested as {DATASET / 'batch-0001.csv'}; nothing to do"
    )
    assert data_version(project) == version
    assert not (project.paths.root / DATASET / "batch-0002.csv").exists()


def test_a_bad_batch_is_rejected_whole_with_its_rows_named_and_nothing_appended(
    project: stages.Context, tmp_path: Path
) -> None:
    source = batch(tmp_path, "bad.csv", "odd")
    frame = pd.read_csv(source)
    frame.loc[3, "text"] = None
    frame.loc[7, "label"] = "meh"
    frame.to_csv(source, index=False)
    dvc_file = project.paths.root / "data" / "raw.dvc"
    before = dvc_file.read_bytes()
    with pytest.raises(DataValidationError) as caught:
        stages.step_ingest(project, source)
    message = str(caught.value)
    assert "bad.csv:4" in message and "bad.csv:8 ('meh')" in message
    assert sorted(p.name for p in (project.paths.root / DATASET).iterdir()) == [
        "batch-0000.csv",
        "labels.json",
    ]
    assert dvc_file.read_bytes() == before


def test_a_failed_push_restores_the_previous_data_version(
    project: stages.Context, tmp_path: Path, record_property: Any
) -> None:
    dvc_file = project.paths.root / "data" / "raw.dvc"
    before = dvc_file.read_bytes()
    blocked = tmp_path / "remote-is-a-file"
    blocked.write_text("not a folder")
    run_tool(
        project.paths.root,
        sys.executable,
        "-m",
        "dvc",
        "remote",
        "modify",
        "local",
        "url",
        str(blocked),
    )
    with pytest.raises(ExternalToolError, match="dvc push") as caught:
        stages.step_ingest(project, batch(tmp_path, "new.csv", "fresh"))
    restored = dvc_file.read_bytes() == before
    added = (project.paths.root / DATASET / "batch-0001.csv").exists()
    record(
        record_property,
        "fault",
        "DVC remote during ingest: the remote URL is a file, not a folder (unwritable)",
        "survived" if restored and not added else "half-added",
        f"ExternalToolError; data/raw.dvc {'restored' if restored else 'CHANGED'}, batch "
        f"{'LEFT' if added else 'removed'}: {caught.value}",
    )
    assert restored
    assert not added


def test_two_ingests_at_once_leave_one_consistent_version(
    project: stages.Context, tmp_path: Path
) -> None:
    """Two ingests started together: the project lock lets one run at a time, so each one
    either adds its batch or stops at once naming the holder (exit 9); whatever ran, the
    data version and the remote agree with the folder."""
    sources = [batch(tmp_path, f"{tag}.csv", tag) for tag in ("north", "south")]
    procs = [
        subprocess.Popen(
            [*CLI, "--root", str(project.paths.root), "ingest", str(source)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=tool_env(),
            cwd=REPO,
        )
        for source in sources
    ]
    added_sources = []
    for source, proc in zip(sources, procs, strict=True):
        _, err = proc.communicate(timeout=300)
        if proc.returncode == 0:
            added_sources.append(source)
        else:
            assert proc.returncode == 9, err
            assert "ProjectBusy" in err and "tuneops ingest" in err and "pid" in err, err
    assert added_sources, "at least one of the two ingests must have run"
    folder = project.paths.root / DATASET
    added = sorted(p.name for p in folder.glob("batch-000[12].csv"))
    assert added == [f"batch-000{i + 1}.csv" for i in range(len(added_sources))]
    contents = {(folder / name).read_bytes() for name in added}
    assert contents == {s.read_bytes() for s in added_sources}
    assert "up to date" in dvc_status(project, "data/raw.dvc")
    assert "in sync" in dvc_status(project, "--cloud", "data/raw.dvc")


@pytest.fixture
def atis_project(dvc_project: Path) -> stages.Context:
    """The bundled ATIS slots fetched, tracked and pushed (params.ner.yaml)."""
    params = preset("params.ner.yaml")
    (dvc_project / "params.ner.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    ctx = stages.load_context(dvc_project, dvc_project / "params.ner.yaml")
    stages.step_fetch(ctx)
    stages.step_version_data(ctx)
    return ctx


def test_token_batches_are_ingested_as_jsonl_or_conll_and_checked_by_the_token_suite(
    atis_project: stages.Context, tmp_path: Path
) -> None:
    dataset = atis_project.paths.root / "data" / "raw" / "atis_slots"
    jsonl = tmp_path / "week-48.jsonl"
    jsonl.write_text(
        json.dumps({"tokens": ["fly", "to", "new", "york"], "tags": ["O", "O", *CITY]}) + "\n",
        encoding="utf-8",
    )
    conll = tmp_path / "week-49.conll"
    conll.write_text("from O\nboston B-fromloc.city_name\n\nto O\ndenver B-toloc.city_name\n")
    before = data_version(atis_project)
    first, version = stages.step_ingest(atis_project, jsonl)
    second, _ = stages.step_ingest(atis_project, conll)
    assert (first.rows, first.batch_file.name) == (1, "batch-0001.jsonl")
    assert (second.rows, second.batch_file.name) == (2, "batch-0002.conll")
    assert version is not None and version.version != before

    dvc_file = atis_project.paths.root / "data" / "raw.dvc"
    pushed = dvc_file.read_bytes()
    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        json.dumps({"tokens": ["to", "york"], "tags": ["O", "I-toloc.city_name"]})
        + "\n"
        + json.dumps({"tokens": ["to", "mars"], "tags": ["O", "B-toloc.planet"]})
        + "\n",
        encoding="utf-8",
    )
    with pytest.raises(DataValidationError) as caught:
        stages.step_ingest(atis_project, broken)
    message = str(caught.value)
    assert "broken.jsonl:1" in message and "'I-toloc.city_name' follows 'O'" in message
    assert "broken.jsonl:2" in message and "B-toloc.planet" in message
    assert not (dataset / "batch-0003.jsonl").exists()
    assert dvc_file.read_bytes() == pushed

    with pytest.raises(DataValidationError, match=r"unsupported file type '\.csv'"):
        stages.step_ingest(atis_project, batch(tmp_path, "rows.csv", "text"))


CITY = ["B-toloc.city_name", "I-toloc.city_name"]
