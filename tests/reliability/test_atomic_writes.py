"""Each disk-writing step writes to a temporary path and renames it into place. A crash
injected between the write and the rename (the one fault here that cannot be produced
for real on demand) must leave the previous outputs byte for byte as they were and no
temporary file behind; the same step run again without the fault then replaces them.

The crash is a simulation: an exception raised by a patched os.rename, so the step's own
cleanup (its finally blocks) still runs and removes the temporary sibling. A real SIGKILL
runs none of it: the previous outputs are still intact (the rename never happened), but
the `.NAME.tmp-<pid>-<id>` sibling stays behind until removed by hand (see DECLINED in
tests/reliability/audit.py, T11).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.evaluate import evaluate
from pipeline.export import ExportResult, export
from pipeline.fetch_data import fetch_data
from pipeline.prepare import prepare
from pipeline.train import train
from pipeline.validate import validate
from tests.conftest import TEXT, Trained
from tests.reliability.conftest import record, tree_hash
from tuneops.config import Params
from tuneops.paths import Paths
from tuneops.runtime import load_bundle
from tuneops.serving.predict import predict_file, write_records

# tuneops.paths names its temporary siblings ".<name>.tmp-<pid>-<id>[.<suffix>]".
TEMPORARY = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]+")


class InjectedCrash(Exception):
    """Raised where the temporary output would have been renamed into place."""


@pytest.fixture
def crash_before_rename(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def guarded(real: Callable[..., Any]) -> Callable[..., Any]:
        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            if TEMPORARY.match(Path(src).name):
                raise InjectedCrash(f"crash after writing {src}, before renaming it to {dst}")
            return real(src, dst, *args, **kwargs)

        return rename

    monkeypatch.setattr(os, "rename", guarded(os.rename))
    monkeypatch.setattr(os, "replace", guarded(os.replace))
    yield


def with_section(params: Params, section: str, **changes: Any) -> Any:
    return getattr(params, section).model_copy(update=changes)


def run_evaluate(p: Params, paths: Paths, **changes: Any) -> object:
    return evaluate(
        TEXT,
        with_section(p, "evaluate", **changes),
        p.model,
        p.train.max_length,
        p.train.seed,
        paths.data_prepared,
        paths.candidate,
        paths.reports,
    )


# Each step, writing its outputs again with a setting changed (so that new outputs differ
# from the previous ones), and the outputs it must write whole or not at all.
Step = Callable[[Params, Paths], object]
STEPS: list[tuple[str, Step, Callable[[Paths], list[Path]]]] = [
    (
        "validate (reports/validation.json, validation.html)",
        lambda p, paths: validate(
            TEXT,
            p.data,
            with_section(p, "validate_", max_duplicate_rate=0.5),
            paths.raw_dataset(p.data.name),
            paths.reports,
        ),
        lambda paths: [paths.reports / "validation.json", paths.reports / "validation.html"],
    ),
    (
        "prepare (data/prepared/)",
        lambda p, paths: prepare(
            TEXT,
            p.data,
            with_section(p, "prepare", test_fraction=0.15),
            ("negative", "positive"),
            paths.raw_dataset(p.data.name),
            paths.data_prepared,
        ),
        lambda paths: [paths.data_prepared],
    ),
    (
        "train (models/candidate/)",
        lambda p, paths: train(
            TEXT,
            p.model,
            with_section(p, "train", max_steps=2),
            paths.data_prepared,
            paths.candidate,
            paths.checkpoints,
            paths.data_cache,
        ),
        lambda paths: [paths.candidate],
    ),
    (
        "evaluate (reports/metrics.json, classification_report.json, confusion_matrix.png, "
        "test_predictions.parquet)",
        lambda p, paths: run_evaluate(p, paths, frozen_baseline_train_rows=20),
        lambda paths: [
            paths.reports / n
            for n in (
                "metrics.json",
                "classification_report.json",
                "confusion_matrix.png",
                "test_predictions.parquet",
            )
        ],
    ),
    (
        "export (models/export/)",
        lambda p, paths: export(
            TEXT,
            with_section(p, "export", parity_examples=8),
            p.train.max_length,
            paths.candidate,
            paths.data_prepared,
            paths.export,
        ),
        lambda paths: [paths.export],
    ),
    (
        "predict --output (a scored CSV)",
        lambda p, paths: write_records(
            predict_file(load_bundle(paths.export), paths.root / "texts.csv", "text", 8, True)[:3],
            paths.root / "scored.csv",
        ),
        lambda paths: [paths.root / "scored.csv"],
    ),
]


@pytest.fixture
def project(trained: Trained, exported: ExportResult, tmp_path: Path) -> Paths:
    """A copy of the trained and exported tiny project, with every output of every step."""
    root = shutil.copytree(
        trained.paths.root, tmp_path / "project", ignore=shutil.ignore_patterns("checkpoints")
    )
    paths = Paths(root)
    p = trained.params
    validate(TEXT, p.data, p.validate_, paths.raw_dataset(p.data.name), paths.reports)
    run_evaluate(p, paths)
    (root / "texts.csv").write_text("text\na moving film\na tedious film\nfine\nawful\n")
    write_records(
        predict_file(load_bundle(paths.export), root / "texts.csv", "text", 8, True),
        root / "scored.csv",
    )
    return paths


def leftovers(paths: list[Path]) -> list[str]:
    parents = {p.parent for p in paths}
    return sorted(
        f.name
        for parent in parents
        for f in parent.iterdir()
        if TEMPORARY.match(f.name) or ".old-" in f.name
    )


@pytest.mark.parametrize(
    ("case", "step", "outputs"), STEPS, ids=[s[0].split(" ")[0] for s in STEPS]
)
def test_a_crash_before_the_rename_leaves_the_previous_outputs_whole(
    case: str,
    step: Step,
    outputs: Callable[[Paths], list[Path]],
    trained: Trained,
    project: Paths,
    crash_before_rename: None,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Any,
) -> None:
    written = outputs(project)
    before = tree_hash(*written)
    with pytest.raises(InjectedCrash):
        step(trained.params, project)
    intact, left = tree_hash(*written) == before, leftovers(written)
    monkeypatch.undo()  # the crash is over: the same step, run again, must replace them
    step(trained.params, project)
    replaced = tree_hash(*written) != before
    record(
        record_property,
        "fault",
        f"crash between write and rename: {case}",
        "survived" if intact and not left and replaced else "DAMAGED",
        f"previous outputs {'intact' if intact else 'CHANGED'}, temporary files left: "
        f"{left or 'none'}; a rerun replaced them: {replaced}",
    )
    assert intact and left == [] and replaced


def test_a_crash_in_a_first_write_leaves_nothing_half_written(
    trained: Trained, crash_before_rename: None, tmp_path: Path, record_property: Any
) -> None:
    data = trained.params.data.model_copy(update={"name": "fresh"})
    raw = tmp_path / "data" / "raw"
    with pytest.raises(InjectedCrash):
        fetch_data(data, raw)
    left = sorted(p.name for p in raw.iterdir()) if raw.exists() else []
    record(
        record_property,
        "fault",
        "crash between write and rename: fetch-data (first write)",
        "survived" if left == [] else "DAMAGED",
        f"data/raw/ holds {left or 'nothing'}",
    )
    assert left == []


def test_the_injection_really_hits_the_rename(tmp_path: Path, crash_before_rename: None) -> None:
    from tuneops.paths import atomic_write_text

    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(InjectedCrash, match=r"\.out\.tmp-\d+-[0-9a-f]+\.json"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
