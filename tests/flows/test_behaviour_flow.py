"""The behavioural checks in the real flow: a candidate that fails one is rejected, and the
check is in reports/gate.md, the Prefect `gate` artifact, the MLflow run and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flows.training import training_flow
from tests.conftest import make_dvc_project, store_client, tiny_overrides, write_params

pytestmark = pytest.mark.integration

MODEL = "tuneops-movie-sentiment"

# One text listed with both labels: whatever the model predicts, one of the two fails, so
# the check's rate is 0.5 for any model and its floor 1.0 rejects every candidate.
CHECKS = {
    "checks": [
        {
            "name": "mft_contradiction",
            "type": "mft",
            "floor": 1.0,
            "examples": [
                {"text": "A film.", "label": "positive"},
                {"text": "A film.", "label": "negative"},
            ],
        },
        {
            "name": "inv_punctuation",
            "type": "inv",
            "perturbation": "punctuation",
            "sample": 20,
            "floor": 0.0,
        },
    ]
}


def test_a_candidate_that_fails_a_behavioural_check_is_rejected_and_gate_md_lists_it(
    tmp_path: Path, prefect_server: None, tiny_model_dir: Path
) -> None:
    from prefect.client.orchestration import get_client

    root = make_dvc_project(tmp_path)
    (root / "data" / "checks" / "movie_sentiment.yaml").write_text(yaml.safe_dump(CHECKS))
    write_params(root, tiny_overrides(tiny_model_dir) | {"gate.behaviour_checks": "auto"})
    state = training_flow(root=str(root), return_state=True)

    assert state.is_failed()
    gate = json.loads((root / "reports" / "gate.json").read_text())
    assert gate["failed_checks"] == ["behaviour:mft_contradiction"]
    assert (
        "behaviour:mft_contradiction: mft: 1 of 2 cases pass (0.5000) vs floor 1.0"
        in gate["summary"]
    )
    assert gate["summary"].endswith(
        f"the floor is {root / 'data' / 'checks' / 'movie_sentiment.yaml'}: checks[0].floor"
    )
    markdown = (root / "reports" / "gate.md").read_text()
    assert "| **FAIL** | behaviour:mft_contradiction | 0.5 | 1.0 |" in markdown
    assert "| pass | behaviour:inv_punctuation |" in markdown
    assert "| mft_contradiction | mft | 2 | 0.5000 | 1.0 | — |" in markdown

    with get_client(sync_client=True) as client:
        response = client.request(
            "POST",
            "/artifacts/filter",
            json={"artifacts": {"key": {"any_": ["gate"]}}, "sort": "CREATED_DESC", "limit": 1},
        )
    (artifact,) = response.json()
    assert artifact["data"] == markdown

    client = store_client(f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version(MODEL, "1")
    assert version.tags["gate.failed_checks"] == "behaviour:mft_contradiction"
    metrics = client.get_run(version.tags["mlflow_run_id"]).data.metrics
    assert metrics["behaviour.mft_contradiction_pass_rate"] == 0.5
    card = (root / "models" / "export" / "README.md").read_text()
    assert "## Behavioural checks (movie_sentiment.yaml)" in card
    assert "| mft_contradiction | mft | 2 | 0.5000 | 1.0 |" in card
