"""Weekly retraining for real: a `prefect server start` on 127.0.0.1, `tuneops schedule`
serving the deployment in a subprocess, runs triggered through the API, `tuneops ingest`
and `tuneops reproduce` as a user runs them. Tiny model, a 400-row slice."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flows.retrain import skip_reason
from pipeline.version_data import read_dvc_md5
from tests.conftest import (
    REPO,
    make_dvc_project,
    store_client,
    tiny_overrides,
    write_params,
)
from tests.flows.conftest import TUNEOPS, trigger, tuneops
from tests.pipeline.test_ingest import batch

pytestmark = pytest.mark.integration

MODEL = "tuneops-movie-sentiment"
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


def test_weekly_retraining_trains_on_new_data_skips_without_it_and_rebuilds_v1(
    tmp_path: Path, tiny_model_dir: Path, prefect_env: dict[str, str]
) -> None:
    root = make_dvc_project(tmp_path)
    write_params(root, tiny_overrides(tiny_model_dir))
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
            assert retrained.state.message.startswith("gate passed: challenger v2 vs champion v1")
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
    assert skipped.state.message == (
        f"no new data since version {new_data} (champion v2); nothing trained"
    )

    rebuilt = tuneops(root, env, "reproduce", "1", "--workspace", str(tmp_path / "rebuild"))
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr[-3000:]
    assert "result: identical" in rebuilt.stdout
    assert (tmp_path / "rebuild" / "data" / "raw" / "movie_sentiment" / "batch-0000.csv").exists()
    assert not (
        tmp_path / "rebuild" / "data" / "raw" / "movie_sentiment" / "batch-0001.csv"
    ).exists()


def test_skip_when_the_champion_or_a_rejected_challenger_already_saw_this_data() -> None:
    champion_only = {"champion": ("1", "aaa", "p1")}
    assert skip_reason("aaa", "p1", champion_only) == "no new data since version aaa (champion v1)"
    assert skip_reason("bbb", "p1", champion_only) is None
    rejected = champion_only | {"challenger": ("2", "bbb", "p1")}
    assert skip_reason("bbb", "p1", rejected) == (
        "no new data since version bbb (v2 was trained on it with these params and not "
        "promoted; champion v1)"
    )
    assert skip_reason("bbb", "p2", rejected) is None  # new params: worth training
    assert skip_reason("aaa", "p1", {}) is None  # nothing trained yet
