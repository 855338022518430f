"""`pipeline.ingest` against the batches already there: the conflicting-labels policy.

Real files and the real text suite; versioning is a no-op here (the DVC path is in
test_ingest.py, an integration test).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.ingest import IngestResult, ingest
from pipeline.validate import validate
from tests.conftest import TEXT
from tuneops.config import DataConfig, ValidateConfig
from tuneops.errors import DataValidationError

DATA = DataConfig(name="ds", text_column="review", label_column="sentiment")


def write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["review", "sentiment"]).to_csv(path, index=False)
    return path


def rows(tag: str, n: int) -> list[tuple[str, str]]:
    return [
        (f"{tag} review {i} was {'great' if i % 2 else 'awful'}", "pos" if i % 2 else "neg")
        for i in range(n)
    ]


def run_ingest(tmp_path: Path, cfg: ValidateConfig) -> IngestResult:
    dataset = tmp_path / "raw" / "ds"
    write(dataset / "batch-0000.csv", rows("old", 300))
    (dataset / "labels.json").write_text('["neg", "pos"]\n')  # ingest needs a label set
    # A valid batch alone, but its last row labels "old review 4 was awful" (neg) pos.
    source = write(tmp_path / "week-48.csv", [*rows("new", 24), ("old review 4 was awful", "pos")])
    return ingest(
        source,
        lambda folder, reports: validate(TEXT, DATA, cfg, folder, reports),
        dataset,
        tmp_path / "reports",
        tmp_path / "ingest.lock",
        version=lambda: None,
        data=DATA,
        policy=cfg,
    )


def test_a_batch_whose_conflicts_stay_within_the_rate_is_added_and_its_drops_listed(
    tmp_path: Path,
) -> None:
    result = run_ingest(tmp_path, ValidateConfig())
    assert result.added
    assert result.dropped_rows == [
        {"source": "batch-0000.csv:5", "reason": "conflicting_label", "sentiment": "neg"},
        {"source": "week-48.csv:25", "reason": "conflicting_label", "sentiment": "pos"},
    ]
    assert (tmp_path / "raw" / "ds" / "batch-0001.csv").exists()


def test_under_reject_a_batch_conflicting_with_the_batches_there_is_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(DataValidationError) as caught:
        run_ingest(tmp_path, ValidateConfig(conflicting_labels="reject"))
    message = str(caught.value)
    assert "labels a text differently from the batches in" in message
    assert "batch-0000.csv:5 (neg), week-48.csv:25 (pos)" in message
    assert "validate.conflicting_labels: reject" in message
    assert not (tmp_path / "raw" / "ds" / "batch-0001.csv").exists()
