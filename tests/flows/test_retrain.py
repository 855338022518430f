"""Weekly retraining for real: a `prefect server start` on 127.0.0.1, `tuneops schedule`
serving the deployment in a subprocess, runs triggered through the API, `tuneops ingest`
and `tuneops reproduce` as a user runs them. Tiny model, a 400-row slice."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn.metrics import f1_score

from flows.retrain import Built, decide
from pipeline.registered import open_version
from pipeline.version_data import read_dvc_md5
from tests.conftest import (
    REPO,
    make_dvc_project,
    store_client,
    tiny_overrides,
    tool_env,
    write_params,
)
from tests.flows.conftest import TUNEOPS, trigger, tuneops
from tests.pipeline.test_ingest import batch

pytestmark = pytest.mark.integration

MODEL = "tuneops-movie-sentiment"
REVIEWS_MODEL = "tuneops-reviews"  # registry.model_name auto, data.name reviews
DEPLOYMENT = "tuneops-retrain/weekly-retrain"


def wait_for_deployment(env: dict[str, str], serve: subprocess.Popen[Any], log: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + 180
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        while True:
            try:
                with get_client(sync_client=True) as client:
                    deployment = client.read_deployment_by_name(DEPLOYMENT)
                    assert deployment.schedules[0].schedule.cron == "0 3 * * 1"
                    return
            except Exception:
                assert serve.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)


@pytest.mark.audit("T4", "D6")
def test_weekly_retraining_trains_on_new_data_skips_without_it_and_rebuilds_v1(
    tmp_path: Path, tiny_model_dir: Path, prefect_env: dict[str, str]
) -> None:
    """The full gate against the champion, re-scored on the new test split, really runs:
    the verdict carries the comparison's figures, and the re-scored champion's macro-F1 is
    sklearn's on v1's own predictions for the new test rows."""
    root = make_dvc_project(tmp_path)
    write_params(root, tiny_overrides(tiny_model_dir) | {"gate.vs_champion": True})
    env = prefect_env
    first = tuneops(root, env, "run")
    assert first.returncode == 0, first.stderr[-3000:]
    dvc_file = root / "data" / "raw.dvc"
    v1_data = read_dvc_md5(dvc_file)

    bad = batch(tmp_path, "bad.csv", "odd")
    frame = pd.read_csv(bad)
    frame.loc[0, "label"] = "upbeat"
    frame.to_csv(bad, index=False)
    rejected = tuneops(root, env, "ingest", str(bad))
    assert rejected.returncode == 3, rejected.stderr
    assert "bad.csv:1 ('upbeat')" in rejected.stderr
    assert read_dvc_md5(dvc_file) == v1_data

    ingested = tuneops(root, env, "ingest", str(batch(tmp_path, "week-48.csv", "fresh")))
    assert ingested.returncode == 0, ingested.stderr
    new_data = read_dvc_md5(dvc_file)
    assert new_data != v1_data

    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen(
            [*TUNEOPS, "--root", str(root), "schedule", "--cron", "0 3 * * 1"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_deployment(env, serve, log)
            retrained = trigger(env, DEPLOYMENT)
            assert retrained.state.is_completed(), (retrained.state, log.read_text()[-3000:])
            assert retrained.state.message.startswith(
                "gate passed: challenger v2 vs champion v1, 2 checks; macro-F1 diff vs champion v1 "
            ), retrained.state.message
            gate = json.loads((root / "reports" / "gate.json").read_text())
            skipped = trigger(env, DEPLOYMENT)
            assert skipped.state.is_completed(), skipped.state
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(timeout=60)

    client = store_client(f"sqlite:///{root / 'mlflow.db'}")
    versions = {str(v.version): v for v in client.search_model_versions(f"name='{MODEL}'")}
    assert sorted(versions) == ["1", "2"]  # the skipped run trained nothing
    assert versions["2"].tags["data.version"] == new_data
    assert versions["1"].tags["data.version"] == v1_data
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    # The comparison ran on the new test split: its figures are the verdict's, and the
    # champion it re-scored is v1 as sklearn scores v1's predictions on those rows.
    c = gate["comparison"]
    assert c["champion_version"] == "1"
    assert retrained.state.message.split("; ")[1] == (
        f"macro-F1 diff vs champion v1 {c['observed_diff']:+.4f}, 95% CI "
        f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], lower bound must be >= -0.02"
    )
    test = pd.read_parquet(root / "data" / "prepared" / "test.parquet")
    v1 = open_version(f"sqlite:///{root / 'mlflow.db'}", MODEL, "1")
    v1_labels = [p.label for p in v1.predict(test["text"].tolist())]
    expected = f1_score(
        test["label"],
        v1_labels,
        average="macro",
        labels=sorted(set(test["label"])),
        zero_division=0,
    )
    v2_run = client.get_run(versions["2"].run_id).data.metrics
    assert v2_run["champion.test_macro_f1"] == pytest.approx(expected, abs=1e-12)
    assert c["champion_metrics"]["test_macro_f1"] == pytest.approx(expected, abs=1e-12)
    assert skipped.state.message == (
        f"v2 was built from this data (prepared fingerprint "
        f"{versions['2'].tags['data.fingerprint'][:12]}), these build params and this code, "
        f"and it is the champion (gate passed): training again would rebuild the same "
        f"model; nothing trained"
    )

    rebuilt = tuneops(root, env, "reproduce", "1", "--workspace", str(tmp_path / "rebuild"))
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr[-3000:]
    assert "result: identical" in rebuilt.stdout
    assert (tmp_path / "rebuild" / "data" / "raw" / "movie_sentiment" / "batch-0000.csv").exists()
    assert not (
        tmp_path / "rebuild" / "data" / "raw" / "movie_sentiment" / "batch-0001.csv"
    ).exists()


@pytest.mark.audit("M20")
def test_decide_trains_on_a_new_key_regates_on_gate_params_alone_and_skips_otherwise() -> None:
    key = ("fp-aaaaaaaaaaaa", "build-1", "code-1")
    now = Built(None, key, "gate-1")
    champion = Built("1", key, "gate-1", "passed")
    assert decide(now, {}).action == "train"
    assert decide(now, {}).reason == "no model is registered yet: training"
    skip = decide(now, {"champion": champion, "challenger": champion})
    assert (skip.action, skip.version) == ("skip", "1")
    regate = decide(Built(None, key, "gate-2"), {"champion": champion})
    assert (regate.action, regate.version) == ("regate", "1")
    assert "only the gate params changed (params.gate_hash gate-1 -> gate-2)" in regate.reason
    for index, name in enumerate(("prepared data", "build params", "code")):
        other = Built(
            None, tuple(f"{v}-new" if i == index else v for i, v in enumerate(key)), "gate-1"
        )
        train = decide(other, {"champion": champion})
        assert train.action == "train"
        assert train.reason.startswith(f"{name} (")
        assert train.reason.endswith("changed since the champion v1: training")
    # A rejected challenger built from the same key: skip under the same gate params,
    # re-gate (it, not the champion) under new ones.
    older = Built("1", ("fp-old", "build-1", "code-1"), "gate-1", "passed")
    rejected = Built("2", key, "gate-1", "failed")
    both = {"champion": older, "challenger": rejected}
    assert decide(now, both).reason == (
        "v2 was built from this data (prepared fingerprint fp-aaaaaaaaa), these build params "
        "and this code, and the gate rejected it with these gate params (champion v1): "
        "training again would rebuild the same model"
    )
    again = decide(Built(None, key, "gate-2"), both)
    assert (again.action, again.version) == ("regate", "2")
    # Versions registered before the key was recorded have no key tags: train.
    untagged = Built("1", (None, None, None), None, "passed")
    assert decide(now, {"champion": untagged}).action == "train"


def reviews(path: Path, tag: str, rows: int) -> Path:
    """Rows of two labels, every fourth one without its label's word (so no model is
    perfect on them)."""
    labels = ["positive", "negative"] * (rows // 2)
    texts = [
        f"{tag} review {i}: {label if i % 4 else 'so-so'} overall" for i, label in enumerate(labels)
    ]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def retrain(root: Path, **overrides: Any) -> Any:
    from flows.retrain import retrain_flow

    return retrain_flow(root=str(root), overrides=overrides or None, return_state=True)


@pytest.mark.audit("M20")
def test_retraining_keys_on_the_prepared_data_build_params_and_code(
    tmp_path: Path, tiny_model_dir: Path, prefect_server: None
) -> None:
    """Real retrain flow runs (tiny model): a batch for another dataset of the project and
    a re-export of rows this dataset has change data/raw's DVC version, not what the model
    is built from, so nothing trains; a gate-only change re-gates v1 without training; a
    code change trains."""
    from prefect.settings import PREFECT_API_URL

    from tuneops import stages

    root = make_dvc_project(tmp_path)
    for name, rows in (("reviews", 200), ("other_reviews", 40)):
        (root / "data" / "raw" / name).mkdir(parents=True)
        reviews(root / "data" / "raw" / name / "batch-0000.csv", name, rows)
    write_params(
        root,
        tiny_overrides(tiny_model_dir)
        | {"data.source": "files", "data.name": "reviews", "validate.max_duplicate_rate": 0.2},
    )
    client = store_client(f"sqlite:///{root / 'mlflow.db'}")
    dvc_file = root / "data" / "raw.dvc"

    first = retrain(root)
    assert first.is_completed(), first.message
    assert first.message.endswith("; no model is registered yet: training")
    v1 = client.get_model_version(REVIEWS_MODEL, "1")
    fingerprint = v1.tags["data.fingerprint"]
    built = (
        f"v1 was built from this data (prepared fingerprint {fingerprint[:12]}), these build "
        f"params and this code"
    )
    skip = (
        f"{built}, and it is the champion (gate passed): training again would rebuild the "
        f"same model; nothing trained"
    )

    # A batch for another dataset of the project; then rows this dataset has, exported
    # again (every field quoted: other bytes, same rows).
    versions_seen = [read_dvc_md5(dvc_file)]
    other = stages.load_context(root, overrides={"data.name": "other_reviews"})
    stages.step_validate(other)  # freezes its labels.json, which ingest requires (M9)
    stages.step_ingest(other, reviews(tmp_path / "other.csv", "more other", 24))
    versions_seen.append(read_dvc_md5(dvc_file))
    again = tmp_path / "re-export.csv"
    pd.read_csv(root / "data" / "raw" / "reviews" / "batch-0000.csv").head(24).to_csv(
        again, index=False, quoting=csv.QUOTE_ALL
    )
    ctx = stages.load_context(root)
    assert stages.step_ingest(ctx, again)[0].added
    versions_seen.append(read_dvc_md5(dvc_file))
    assert len(set(versions_seen)) == 3  # data/raw's version moved twice
    skipped = retrain(root)
    assert skipped.is_completed(), skipped.message
    assert skipped.message == skip

    # gate.* alone: v1 is judged again under the new gate, and nothing trains.
    old_gate = v1.tags["params.gate_hash"]
    strict = {"gate.floors": {"test_macro_f1": 0.99}}
    regated = retrain(root, **strict)
    new_gate = client.get_model_version(REVIEWS_MODEL, "1").tags["params.gate_hash"]
    assert regated.is_failed()
    assert regated.message.startswith(
        f"{built}; only the gate params changed (params.gate_hash {old_gate[:12]} -> "
        f"{new_gate[:12]}): re-gating v1 without training; gate rejected challenger v1 vs "
        f"champion v1: floor:test_macro_f1: "
    ), regated.message
    assert client.get_model_version(REVIEWS_MODEL, "1").tags["gate.verdict"] == "failed"
    assert retrain(root, **strict).message == skip.replace("gate passed", "gate failed")
    passed = retrain(root)  # the gate params v1 was first judged with: judged again, passes
    assert passed.is_completed(), passed.message
    assert "re-gating v1 without training; gate passed: challenger v1" in passed.message
    assert [str(v.version) for v in client.search_model_versions(f"name='{REVIEWS_MODEL}'")] == [
        "1"
    ]

    # A code change (here a comment in the copy of pipeline/train.py the run imports).
    with (root / "pipeline" / "train.py").open("a", encoding="utf-8") as code:
        code.write("# a fix\n")
    env = {k: v for k, v in tool_env().items() if k != "PYTHONPATH"}
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    changed = subprocess.run(
        [sys.executable, "-m", "tuneops.cli", "--root", str(root), "retrain"],
        cwd=root,  # its own copy of tuneops, pipeline and flows is the code that runs
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert changed.returncode == 0, changed.stderr[-3000:]
    v2 = client.get_model_version(REVIEWS_MODEL, "2")
    assert v2.tags["code.version"] != v1.tags["code.version"]
    (verdict,) = [line for line in changed.stdout.splitlines() if line.startswith("retrain: ")]
    assert verdict.startswith("retrain: gate passed: challenger v2 vs champion v1")
    assert verdict.endswith(
        f"; code (code.version {v1.tags['code.version'][:12]} -> {v2.tags['code.version'][:12]}) "
        f"changed since the champion v1: training"
    )


def test_data_that_prepare_refuses_never_becomes_a_version_in_a_retrain(
    tmp_path: Path, tiny_model_dir: Path, prefect_server: None
) -> None:
    """A git + DVC project with a pushed data version; a dataset that validates but that
    prepare refuses (two negative rows, neither hashing into test, under
    validate.min_examples_per_class: 2): the retrain run fails naming it,
    and data/raw.dvc and the DVC remote are byte for byte as they were."""
    from tests.data.bad.corpus import split_starved
    from tests.reliability.conftest import tree_hash
    from tuneops import stages
    from tuneops.errors import DataValidationError

    root = make_dvc_project(tmp_path)
    (root / "data" / "raw" / "reviews").mkdir(parents=True)
    reviews(root / "data" / "raw" / "reviews" / "batch-0000.csv", "kept", 40)
    write_params(root, tiny_overrides(tiny_model_dir) | {"data.source": "files"})
    stages.step_version_data(stages.load_context(root))  # version 1, pushed
    dataset = root / "data" / "raw" / "mine"
    dataset.mkdir()
    (dataset / "batch-0000.csv").write_bytes(split_starved())
    starved = {"data.source": "files", "data.name": "mine", "validate.min_examples_per_class": 2}
    write_params(root, tiny_overrides(tiny_model_dir) | starved)
    watched = (root / "data" / "raw.dvc", tmp_path / "dvc-remote")
    before = tree_hash(*watched)

    state = retrain(root)
    assert state.is_failed()
    with pytest.raises(DataValidationError, match=r"the test split has no rows of label"):
        state.result()
    assert "batch-0000.csv:41" in state.message
    assert tree_hash(*watched) == before
    assert not (root / "models").exists()
