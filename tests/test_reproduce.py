"""`tuneops reproduce`'s verdict and table: a comparison of nothing is a failure, not a
pass; the recorded library versions stand beside the current ones and a -dirty recorded
commit is flagged."""

from pathlib import Path
from typing import Any

import pytest

from tuneops.reproduce import Reproduction

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
LIBS = {"python": "3.11.9", "torch": "2.5.1", "transformers": "4.46.3"}


def reproduction(tmp_path: Path, **changes: Any) -> Reproduction:
    fields: dict[str, Any] = {
        "version": "1",
        "workspace": tmp_path,
        "data_version": "abc",
        "recorded_fingerprint": "f",
        "fingerprint": "f",
        "recorded_commit": SHA,
        "current_commit": SHA,
        "device": "cpu",
        "metrics": {"test_macro_f1": (0.5, 0.5)},
        "tolerance": 1e-9,
        "recorded_libraries": dict(LIBS),
        "current_libraries": dict(LIBS),
    }
    return Reproduction(**(fields | changes))


@pytest.mark.audit("C2")
def test_a_reproduction_that_compares_nothing_is_not_a_reproduction(tmp_path: Path) -> None:
    nothing = reproduction(tmp_path, metrics={})
    assert not nothing.same_metrics
    assert "no metric recorded" in nothing.table()
    same = reproduction(tmp_path, metrics={"test_entity_f1": (0.5, 0.5)})
    assert same.same_metrics and "identical" in same.table()


def row(name: str, recorded: str, current: str, mark: str = "") -> str:
    return f"{name:28} {recorded:>34} {current:>34}{mark}"


@pytest.mark.audit("m16")
def test_the_table_sets_the_recorded_libraries_beside_the_current_ones(tmp_path: Path) -> None:
    """A torch upgrade and a library the run did not record are marked; the verdict still
    comes from the data and the metrics."""
    result = reproduction(
        tmp_path,
        current_libraries={"python": "3.11.9", "torch": "2.6.0", "transformers": "4.46.3"}
        | {"onnx": "1.17.0"},
    )
    assert result.libraries_that_differ == ["torch", "onnx"]
    assert result.table().splitlines() == [
        f"reproduced v1 in {tmp_path} on cpu",
        row("", "recorded", "reproduced"),
        row("data version", "abc", "abc"),
        row("prepared fingerprint", "f", "f"),
        row("git commit", "0123456789ab", "0123456789ab"),
        f"{'test_macro_f1':28} {0.5:>34.6f} {0.5:>34.6f}",
        row("lib.python", "3.11.9", "3.11.9"),
        row("lib.torch", "2.5.1", "2.6.0", "  DIFFERENT"),
        row("lib.transformers", "4.46.3", "4.46.3"),
        row("lib.onnx", "not recorded", "1.17.0", "  DIFFERENT"),
        "libraries differ from the recorded run: torch, onnx (CPU results are bit-exact only "
        "with the recorded versions)",
        "result: identical (metric tolerance 1e-09)",
    ]


@pytest.mark.audit("m16")
def test_a_dirty_recorded_commit_is_flagged(tmp_path: Path) -> None:
    result = reproduction(tmp_path, recorded_commit=f"{SHA}-dirty")
    lines = result.table().splitlines()
    assert lines[4] == row("git commit", "0123456789ab-dirty", "0123456789ab", "  DIRTY")
    assert lines[-2:] == [
        "the recorded commit is -dirty: it was trained with uncommitted code or params, so no "
        "commit holds the code it ran",
        "result: identical (metric tolerance 1e-09)",
    ]


@pytest.mark.audit("m16")
def test_another_commit_and_a_run_without_library_tags_are_said(tmp_path: Path) -> None:
    result = reproduction(tmp_path, current_commit=OTHER, recorded_libraries={})
    lines = result.table().splitlines()
    assert lines[4] == row("git commit", "0123456789ab", "fedcba987654", "  DIFFERENT")
    assert lines[5:] == [
        f"{'test_macro_f1':28} {0.5:>34.6f} {0.5:>34.6f}",
        "no library versions (lib.* tags) recorded on the run",
        "result: identical (metric tolerance 1e-09)",
    ]
