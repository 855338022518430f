"""data.version names the data that was read (audit M10 b, c), in a real git + DVC project:
the version is checked against the files prepare read, never made by a `dvc add` on the
side, and the flows hold the data lock from validation through `dvc add`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from pipeline.train import read_manifest
from pipeline.version_data import read_dvc_md5, versioned_files
from tests.conftest import make_dvc_project, store_client, tiny_overrides, write_params
from tuneops import recording, stages
from tuneops.errors import DataValidationError

pytestmark = pytest.mark.integration


def reviews(path: Path, tag: str, rows: int = 100) -> Path:
    labels = ["positive", "negative"] * (rows // 2)
    texts = [f"{tag} review {i}: {label} overall" for i, label in enumerate(labels)]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path) -> stages.Context:
    """A git + DVC project with its own small dataset (data/raw/reviews), not yet versioned."""
    root = make_dvc_project(tmp_path)
    (root / "data" / "raw" / "reviews").mkdir(parents=True)
    reviews(root / "data" / "raw" / "reviews" / "batch-0000.csv", "first")
    write_params(
        root, tiny_overrides(tiny_model_dir) | {"data.source": "files", "data.name": "reviews"}
    )
    return stages.load_context(root)


@pytest.mark.audit("M10")
def test_data_changed_without_dvc_add_is_refused_before_training_not_tagged_old(
    project: stages.Context,
) -> None:
    ctx = project
    stages.step_validate(ctx)  # the flows' order: validate (which freezes labels.json), version
    stages.step_version_data(ctx)
    stages.step_prepare(ctx)
    version = read_dvc_md5(ctx.paths.data_raw.with_name("raw.dvc"))
    manifest = read_manifest(ctx.paths.data_prepared)
    held = versioned_files(ctx.paths.root, version)
    assert sorted(held) == ["reviews/batch-0000.csv", "reviews/labels.json"]
    assert manifest["raw_files"] == held
    assert recording.prepared_data_version(ctx, manifest) == version

    # A new file, no `dvc add`: data/raw.dvc still names the old version.
    reviews(ctx.paths.raw_dataset("reviews") / "batch-0001.csv", "second")
    stages.step_prepare(ctx)
    with pytest.raises(DataValidationError) as refused:
        stages.step_train(ctx)
    assert str(refused.value).startswith(
        f"{ctx.paths.data_raw.with_name('raw.dvc')}: data version {version} does not hold the "
        f"data that was prepared: reviews/batch-0001.csv (prepared, not in the version); "
    )
    assert "`tuneops stage version-data`" in str(refused.value)
    client = store_client(ctx.tracking_uri)  # no run started, nothing trained
    assert [
        r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
    ] == []
    assert not ctx.paths.candidate.exists()

    # Versioned now: the same prepared files are what the new version holds.
    new = stages.step_version_data(ctx).version
    assert new != version
    assert recording.prepared_data_version(ctx, read_manifest(ctx.paths.data_prepared)) == new


@pytest.mark.audit("M10")
def test_naming_the_data_version_never_runs_dvc_add(project: stages.Context) -> None:
    """Before: with data/raw.dvc missing, `current_data_version` (called by the train and
    register stages' lineage) ran `dvc add` itself."""
    ctx = project
    stages.step_validate(ctx)
    stages.step_prepare(ctx)
    dvc_file = ctx.paths.data_raw.with_name("raw.dvc")
    with pytest.raises(DataValidationError, match=r"raw\.dvc: missing"):
        recording.current_data_version(ctx)
    with pytest.raises(DataValidationError, match=r"raw\.dvc: missing, so no data version"):
        recording.prepared_data_version(ctx, read_manifest(ctx.paths.data_prepared))
    assert not dvc_file.exists()


@pytest.mark.audit("M10")
def test_an_ingest_waits_for_the_flow_from_validation_until_dvc_add(
    project: stages.Context, prefect_server: None
) -> None:
    """A writer that takes the data lock (as ingest does) the moment prepare has written
    its output: before, it slipped a batch in before the flow's `dvc add`, and the version
    tagged held a file that was never prepared; now it waits until the version is made."""
    from flows.training import training_flow

    ctx = project
    late = ctx.paths.raw_dataset("reviews") / "batch-0001.csv"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import shutil, time
                from pathlib import Path
                from filelock import FileLock
                manifest = Path({str(ctx.paths.data_prepared / "manifest.json")!r})
                while not manifest.exists():
                    time.sleep(0.005)
                with FileLock({str(ctx.paths.data_lock)!r}, timeout=600):
                    shutil.copy({str(ctx.paths.raw_dataset("reviews") / "batch-0000.csv")!r},
                                {str(late)!r})
                """
            ),
        ]
    )
    try:
        state = training_flow(root=str(ctx.paths.root), return_state=True)
    finally:
        assert writer.wait(timeout=600) == 0
    assert state.is_completed(), state.message
    tag = store_client(ctx.tracking_uri).get_run(state.result().mlflow_run_id).data.tags
    held = versioned_files(ctx.paths.root, tag["data.version"])
    assert held is not None
    assert {p: m for p, m in held.items() if p.startswith("reviews/")} == (
        read_manifest(ctx.paths.data_prepared)["raw_files"]
    )
    assert late.exists()  # the writer ran, after the version was made
