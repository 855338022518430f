"""git.commit in a real git repository: the files the pipeline writes itself (the STAGES
table's outs, data/raw.dvc, dvc.lock) never make it "-dirty"; code and params do."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_tool
from tuneops.lineage import git_commit
from tuneops.stages import pipeline_owned


def test_the_pipeline_owned_paths_are_the_stage_outs_and_the_data_version_files() -> None:
    assert pipeline_owned() == (
        "data/prepared",
        "data/raw",
        "data/raw.dvc",
        "dvc.lock",
        "models/candidate",
        "models/export",
        "reports/classification_report.json",
        "reports/confusion_matrix.png",
        "reports/data_docs",
        "reports/gate.json",
        "reports/gate.md",
        "reports/label_issues.json",
        "reports/label_issues.md",
        "reports/metrics.json",
        "reports/registry.json",
        "reports/test_predictions.parquet",
        "reports/validation.html",
        "reports/validation.json",
    )


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    """A git repository that tracks, as a clone of tuneops does, code, params.yaml and the
    pipeline-written data/raw.dvc, dvc.lock and reports/metrics.json."""
    root = tmp_path / "project"
    files = {
        "pipeline/train.py": "EPOCHS = 3\n",
        "params.yaml": "train:\n  epochs: 3\n",
        "data/raw.dvc": "outs:\n- md5: aaaa.dir\n  path: raw\n",
        "dvc.lock": "schema: '2.0'\n",
        "reports/metrics.json": '{"test_macro_f1": 0.5}\n',
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    run_tool(root, "git", "init", "-q")
    run_tool(root, "git", "config", "user.email", "tests@tuneops.local")
    run_tool(root, "git", "config", "user.name", "tuneops tests")
    run_tool(root, "git", "add", "-A")
    run_tool(root, "git", "commit", "-qm", "project")
    head = run_tool(root, "git", "rev-parse", "HEAD").stdout.strip()
    return root, head


@pytest.mark.audit("M10")
def test_a_clean_checkout_is_its_head(repo: tuple[Path, str]) -> None:
    root, head = repo
    assert git_commit(root, pipeline_owned()) == head


@pytest.mark.audit("M10")
def test_tracked_pipeline_outputs_rewritten_by_a_run_leave_the_commit_clean(
    repo: tuple[Path, str],
) -> None:
    """What a default run does: dvc add rewrites data/raw.dvc, evaluate rewrites
    reports/metrics.json, dvc repro rewrites dvc.lock (one of them staged)."""
    root, head = repo
    (root / "data/raw.dvc").write_text("outs:\n- md5: bbbb.dir\n  path: raw\n", encoding="utf-8")
    (root / "reports/metrics.json").write_text('{"test_macro_f1": 0.7}\n', encoding="utf-8")
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n", encoding="utf-8")
    run_tool(root, "git", "add", "dvc.lock")
    assert git_commit(root, pipeline_owned()) == head


@pytest.mark.parametrize("changed", ["pipeline/train.py", "params.yaml"])
@pytest.mark.audit("M10")
def test_a_modified_code_or_params_file_makes_it_dirty(
    repo: tuple[Path, str], changed: str
) -> None:
    root, head = repo
    (root / "reports/metrics.json").write_text('{"test_macro_f1": 0.7}\n', encoding="utf-8")
    (root / changed).write_text("# edited\n", encoding="utf-8")
    assert git_commit(root, pipeline_owned()) == f"{head}-dirty"


@pytest.mark.audit("M10")
def test_a_deleted_code_file_makes_it_dirty(repo: tuple[Path, str]) -> None:
    root, head = repo
    (root / "pipeline/train.py").unlink()
    assert git_commit(root, pipeline_owned()) == f"{head}-dirty"


@pytest.mark.audit("M10")
def test_a_project_in_a_subfolder_counts_code_anywhere_in_the_repository(
    tmp_path: Path,
) -> None:
    """A monorepo: the project is a subfolder; its owned paths are relative to it, and a
    change elsewhere in the repository still counts."""
    top = tmp_path / "mono"
    root = top / "ml"
    (root / "reports").mkdir(parents=True)
    (top / "lib.py").write_text("X = 1\n", encoding="utf-8")
    (root / "reports/metrics.json").write_text("{}\n", encoding="utf-8")
    # a path that is pipeline-owned at the repository's top but not in the project
    (top / "reports").mkdir()
    (top / "reports/metrics.json").write_text("{}\n", encoding="utf-8")
    run_tool(top, "git", "init", "-q")
    run_tool(top, "git", "config", "user.email", "tests@tuneops.local")
    run_tool(top, "git", "config", "user.name", "tuneops tests")
    run_tool(top, "git", "add", "-A")
    run_tool(top, "git", "commit", "-qm", "mono")
    head = run_tool(top, "git", "rev-parse", "HEAD").stdout.strip()

    (root / "reports/metrics.json").write_text('{"a": 1}\n', encoding="utf-8")
    assert git_commit(root, pipeline_owned()) == head
    (top / "reports/metrics.json").write_text('{"a": 1}\n', encoding="utf-8")
    assert git_commit(root, pipeline_owned()) == f"{head}-dirty"


def test_outside_git_it_is_unknown(tmp_path: Path) -> None:
    assert git_commit(tmp_path, pipeline_owned()) == "unknown"


def test_lineage_keys_name_every_lineage_tag(tmp_path: Path) -> None:
    """The register stage copies LINEAGE_KEYS from the training summary: they must be
    exactly the tags training records."""
    import json

    from tuneops.context import load_context
    from tuneops.recording import LINEAGE_KEYS, lineage_tags
    from tuneops.stages import build_key

    (tmp_path / "params.yaml").write_text("{}\n")
    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "manifest.json").write_text(json.dumps({"fingerprint": "f", "raw_files": {}}))
    ctx = load_context(tmp_path)
    assert tuple(lineage_tags(ctx, pipeline_owned(), build_key(ctx))) == LINEAGE_KEYS
