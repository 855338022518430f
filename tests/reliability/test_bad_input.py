"""The bad-input corpus (tests/data/bad/) through the commands a user runs.

Each rejected case goes through `tuneops ingest` (a new batch for a real git + DVC
project with a pushed data version) and through `tuneops run` (the file as the whole
dataset, in a copy of that git + DVC project, whose tracking store has a champion), and
must end with exit code 3, one `tuneops: DataValidationError:` report naming the file, the
row or field and what was expected, no traceback, data/raw, data/raw.dvc and (for `run`)
the DVC remote byte for byte as they were, and no run, model version or alias change in
the registry. The accepted cases (a BOM,
CRLF and quoted newlines, extra columns) must be ingested and read right.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.io import read_raw
from tests.conftest import make_dvc_project, preset, run_tool, set_dotted
from tests.data.bad.corpus import ACCEPTED, CASES, Case, huge_text, write_all
from tests.reliability.conftest import (
    NER_MODEL,
    TEXT_MODEL,
    Registry,
    record,
    run_cli,
    tree_hash,
)
from tuneops import stages

pytestmark = pytest.mark.integration

TEXT = {"base": "params.yaml", "name": "movie_sentiment", "model": TEXT_MODEL}
NER = {"base": "params.ner.yaml", "name": "atis_slots", "model": NER_MODEL}


def write_project_params(root: Path, base: str, overrides: dict[str, Any]) -> None:
    params = preset(base)
    for key, value in overrides.items():
        set_dotted(params, key, value)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def bundled_project(tmp: Path, kind: dict[str, str], registry: Registry) -> stages.Context:
    """A git + DVC project with the bundled dataset fetched, added and pushed."""
    root = make_dvc_project(tmp)
    write_project_params(
        root, kind["base"], {"data.hold_back_rows": 0, "tracking.uri": registry.uri}
    )
    ctx = stages.load_context(root)
    stages.step_fetch(ctx)
    stages.step_version_data(ctx)
    return ctx


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> dict[str, Any]:
    return {
        "text": bundled_project(tmp_path_factory.mktemp("text"), TEXT, registry),
        "ner": bundled_project(tmp_path_factory.mktemp("ner"), NER, registry),
    }


def case_file(case: Case, tmp_path: Path) -> Path:
    return huge_text(tmp_path) if case.name == "huge_text.csv" else case.path


def check_rejection(
    case: Case, source: Path, run: Any, changed: bool, record_property: Any, path: str
) -> None:
    """Recorded for the table first (what happened), then held to what must happen."""
    outcome = f"exit {run.exit_code}" + (", CHANGED data or registry" if changed else "")
    record(
        record_property, "bad input", case.name, outcome, run.error_line, what=case.what, path=path
    )
    assert run.exit_code == case.exit_code, run.err[-3000:]
    assert run.error_line.startswith("tuneops: DataValidationError: "), run.err[-3000:]
    assert source.name in run.error_line
    for fragment in case.says:
        assert fragment in run.error_line, f"{fragment!r} not in:\n{run.error_line}"
    assert "Traceback" not in run.err + run.out
    assert not changed, "data/raw, data/raw.dvc or the registry changed"


def test_the_committed_corpus_is_what_the_script_writes(tmp_path: Path) -> None:
    committed = {
        case.path: case.path.read_bytes() for case in (*CASES, *ACCEPTED) if not case.generated
    }
    assert {path: path.read_bytes() for path in write_all()} == committed


INGESTED = [c for c in CASES if "ingest" in c.paths]


@pytest.mark.parametrize("case", INGESTED, ids=[c.name for c in INGESTED])
def test_ingest_rejects_the_batch_and_appends_nothing(
    case: Case,
    projects: dict[str, Any],
    registry: Registry,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    record_property: Any,
) -> None:
    ctx: stages.Context = projects["ner" if case.kind == "ner" else "text"]
    raw, dvc_file = ctx.paths.data_raw, ctx.paths.data_raw.with_name("raw.dvc")
    before = (tree_hash(raw, dvc_file), registry.state())
    source = case_file(case, tmp_path)
    settings = [arg for setting in case.settings for arg in ("--set", setting)]
    run = run_cli(capfd, "--root", str(ctx.paths.root), *settings, "ingest", str(source))
    after = (tree_hash(raw, dvc_file), registry.state())
    check_rejection(case, source, run, after != before, record_property, "tuneops ingest")


RUN = [c for c in CASES if "run" in c.paths]


@pytest.mark.parametrize("case", RUN, ids=[c.name for c in RUN])
@pytest.mark.audit("M7", "T1")
def test_run_stops_before_training_and_registers_nothing(
    case: Case,
    projects: dict[str, Any],
    registry: Registry,
    prefect_server: None,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    record_property: Any,
) -> None:
    kind = NER if case.kind == "ner" else TEXT
    bundled: stages.Context = projects["ner" if case.kind == "ner" else "text"]
    # A copy of the git + DVC project (its bundled data added and pushed, the remote
    # beside it), with the bad file as the dataset the run reads.
    copy = tmp_path / "copy"
    shutil.copytree(bundled.paths.root.parent, copy, symlinks=True)
    root, remote = copy / bundled.paths.root.name, copy / "dvc-remote"
    run_tool(root, sys.executable, "-m", "dvc", "remote", "modify", "local", "url", str(remote))
    dataset = root / "data" / "raw" / "mine"
    dataset.mkdir(parents=True)
    source = shutil.copy(case_file(case, tmp_path), dataset)
    if case.notes.get("labels_json") != "none":
        shutil.copy(bundled.paths.raw_dataset(kind["name"]) / "labels.json", dataset)
    dvc_file = root / "data" / "raw.dvc"
    assert dvc_file.exists() and any(remote.rglob("*"))  # a data version, pushed
    write_project_params(
        root,
        kind["base"],
        {
            "data.source": "files",
            "data.name": "mine",
            "tracking.uri": registry.uri,
            "registry.model_name": kind["model"],
        },
    )
    watched = (root / "data" / "raw", dvc_file, remote)
    before = (tree_hash(*watched), registry.state())
    settings = [arg for setting in case.settings for arg in ("--set", setting)]
    run = run_cli(capfd, "--root", str(root), *settings, "run")
    after = (tree_hash(*watched), registry.state())
    check_rejection(case, Path(source), run, after != before, record_property, "tuneops run")
    assert not (root / "models").exists()


@pytest.fixture(scope="module")
def plain_text_project(tmp_path_factory: pytest.TempPathFactory) -> stages.Context:
    """The bundled dataset in a project without DVC (the data version is a file hash)."""
    root = tmp_path_factory.mktemp("accepted")
    write_project_params(root, TEXT["base"], {"data.hold_back_rows": 0})
    ctx = stages.load_context(root)
    stages.step_fetch(ctx)
    return ctx


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.name for c in ACCEPTED])
def test_valid_but_unusual_files_are_ingested_and_read_right(
    case: Case,
    plain_text_project: stages.Context,
    capfd: pytest.CaptureFixture[str],
    record_property: Any,
) -> None:
    ctx = plain_text_project
    run = run_cli(capfd, "--root", str(ctx.paths.root), "ingest", str(case.path))
    record(
        record_property,
        "accepted input",
        case.name,
        f"exit {run.exit_code}",
        run.out.strip(),
        what=case.what,
        path="tuneops ingest",
    )
    assert run.exit_code == 0, run.err[-3000:]
    dataset = ctx.paths.raw_dataset(TEXT["name"])
    [batch] = [p for p in dataset.iterdir() if p.read_bytes() == case.path.read_bytes()]
    frame = read_raw(dataset, "text", "label")
    rows = frame[frame["source"].str.startswith(f"{batch.name}:")]
    assert len(rows) == 24 + ("last_text" in case.notes)
    assert set(frame.columns) == {"text", "label", "source"}
    if "first_text" in case.notes:
        assert rows.iloc[0]["text"] == case.notes["first_text"]
    if "last_text" in case.notes:
        assert rows.iloc[-1]["text"] == case.notes["last_text"]
    assert set(rows["label"]) == {"negative", "positive"}
    stages.step_validate(ctx)  # the grown dataset still passes as a whole
