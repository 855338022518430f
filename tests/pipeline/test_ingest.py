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
from tests.reliability.conftest import record, tree_hash
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


@pytest.mark.audit("M18")
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
    # the cause, DVC's ERROR: line, not its "Having any troubles?" support banner
    assert f"ERROR: unexpected error - [Errno 20] Not a directory: '{blocked}" in str(caught.value)
    assert "Having any troubles" not in str(caught.value)
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


@pytest.mark.audit("M8", "D5")
def test_two_ingests_at_once_leave_one_consistent_version(
    project: stages.Context, tmp_path: Path
) -> None:
    """Two ingests started together whose batches label the same texts the other way,
    under validate.conflicting_labels: reject. Each alone is valid; run one after the other,
    the second is refused. The project lock serialises validation too, so exactly one is
    added: the other stops at once naming the holder (exit 9), or runs after it and is
    refused for the conflict (exit 3); the data version and the remote agree with the folder.
    """
    texts = [f"a review written twice, number {i}" for i in range(24)]
    sources = []
    for tag, first in (("north", "positive"), ("south", "negative")):
        other = "negative" if first == "positive" else "positive"
        path = tmp_path / f"{tag}.csv"
        labels = [first if i % 2 else other for i in range(24)]
        pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
        sources.append(path)
    reject = ("--set", "validate.conflicting_labels=reject")
    procs = [
        subprocess.Popen(
            [*CLI, "--root", str(project.paths.root), *reject, "ingest", str(source)],
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
        elif proc.returncode == 9:
            assert "ProjectBusy" in err and "tuneops ingest" in err and "pid" in err, err
        else:
            assert proc.returncode == 3, err
            assert "labels a text differently from the batches in" in err, err
    assert len(added_sources) == 1, "exactly one of the two conflicting batches is added"
    folder = project.paths.root / DATASET
    added = sorted(p.name for p in folder.glob("batch-000[12].csv"))
    assert added == ["batch-0001.csv"]
    assert (folder / "batch-0001.csv").read_bytes() == added_sources[0].read_bytes()
    assert "up to date" in dvc_status(project, "data/raw.dvc")
    assert "in sync" in dvc_status(project, "--cloud", "data/raw.dvc")
    strict = stages.load_context(
        project.paths.root, None, {"validate.conflicting_labels": "reject"}
    )
    stages.step_validate(strict)  # the grown dataset validates under the policy


def watched(ctx: stages.Context) -> str:
    """data/raw and data/raw.dvc, byte for byte."""
    return tree_hash(ctx.paths.data_raw, ctx.paths.data_raw.with_name("raw.dvc"))


def rejected(ctx: stages.Context, source: Path) -> str:
    """The DataValidationError of ingesting `source`, after which data/raw and
    data/raw.dvc are byte for byte as they were."""
    before = watched(ctx)
    with pytest.raises(DataValidationError) as caught:
        stages.step_ingest(ctx, source)
    assert watched(ctx) == before
    return str(caught.value)


def own_data_without_labels(ctx: stages.Context) -> Path:
    """The bundled batch as the user's own data: no labels.json, data.labels null; versioned."""
    (ctx.paths.root / DATASET / "labels.json").unlink()
    stages.step_version_data(ctx)
    return ctx.paths.root / DATASET


@pytest.mark.audit("M9", "D8")
def test_the_first_inference_freezes_the_label_set_and_a_typo_label_is_then_rejected(
    project: stages.Context, tmp_path: Path
) -> None:
    dataset = own_data_without_labels(project)
    result = stages.step_validate(project)
    assert result.label_source == "inferred"
    assert json.loads((dataset / "labels.json").read_text(encoding="utf-8")) == [
        "negative",
        "positive",
    ]
    source = batch(tmp_path, "week-49.csv", "typo")
    frame = pd.read_csv(source)
    frame.loc[5, "label"] = "postive"
    frame.to_csv(source, index=False)
    message = rejected(project, source)
    assert "expect_column_values_to_be_in_set column 'label'" in message
    assert "week-49.csv:6 ('postive')" in message
    assert "value_set=['negative', 'positive']" in message
    assert "outside labels.json ['negative', 'positive']" in message
    # A good batch is versioned with the frozen label set: labels.json is in data/raw.dvc's
    # version, and what DVC tracks is what is in the folder.
    stages.step_ingest(project, batch(tmp_path, "week-50.csv", "fine"))
    assert "up to date" in dvc_status(project, "data/raw.dvc")
    assert "in sync" in dvc_status(project, "--cloud", "data/raw.dvc")
    assert stages.step_validate(project).label_source == "labels.json"


@pytest.mark.audit("M9")
def test_ingest_without_a_label_set_refuses_and_says_how_to_get_one(
    project: stages.Context, tmp_path: Path
) -> None:
    dataset = own_data_without_labels(project)
    message = rejected(project, batch(tmp_path, "week-49.csv", "fresh"))
    assert f"{dataset / 'labels.json'} does not exist and data.labels is null" in message
    assert "`tuneops stage validate`" in message


@pytest.mark.audit("M21")
def test_a_batch_of_one_label_or_of_a_few_corrections_is_judged_with_the_dataset(
    project: stages.Context, tmp_path: Path
) -> None:
    """A week of only positive reviews, then three corrections: each batch alone has a
    label missing or below validate.min_examples_per_class (10); the grown dataset has not."""
    week = tmp_path / "only-positive.csv"
    pd.DataFrame(
        {"text": [f"a week of praise, review {i}" for i in range(30)], "label": "positive"}
    ).to_csv(week, index=False)
    fixes = tmp_path / "corrections.csv"
    pd.DataFrame(
        {
            "text": ["a correction", "another correction", "a third correction"],
            "label": ["negative", "positive", "negative"],
        }
    ).to_csv(fixes, index=False)
    first, _ = stages.step_ingest(project, week)
    second, _ = stages.step_ingest(project, fixes)
    assert (first.added, first.rows, first.batch_file.name) == (True, 30, "batch-0001.csv")
    assert (second.added, second.rows, second.batch_file.name) == (True, 3, "batch-0002.csv")
    grown = stages.step_validate(project)
    assert grown.label_counts == {"negative": 5078 + 2, "positive": 4990 + 31}


@pytest.mark.audit("M21")
def test_repeats_of_existing_rows_count_against_the_datasets_duplicate_rate(
    project: stages.Context, tmp_path: Path
) -> None:
    """1,200 rows re-exported from the first batch: no duplicate within the batch, but with
    the dataset (10,068 rows, 2 repeats already) 1,202 of 11,268 rows repeat, 10.67%, above
    validate.max_duplicate_rate (10%)."""
    existing = pd.read_csv(project.paths.root / DATASET / "batch-0000.csv")
    source = tmp_path / "re-export.csv"
    existing.head(1200).to_csv(source, index=False)
    message = rejected(project, source)
    assert "the dataset with re-export.csv added" in message
    assert "expect_no_duplicate_rows column 'text'" in message
    assert "re-export.csv:1 ('repeats batch-0000.csv:1')" in message
    assert "1202 rows are 10.67% of 11268, above validate.max_duplicate_rate: 0.1" in message


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
