"""A training run killed with SIGKILL mid-epoch, then `tuneops stage train` again: it
resumes from the last checkpoint and ends where an uninterrupted run with the same seed
ends (CPU: the same weights, bit for bit, and the same validation metrics)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from pipeline.train import read_manifest
from tests.conftest import REPO, store_client, tiny_overrides, tool_env, write_params
from tests.reliability.conftest import record
from tuneops import stages

pytestmark = pytest.mark.integration

CHECKPOINT_STEPS = 5
# Every run in its own process with one intra-op thread: the same arithmetic in each, and
# on a loaded 2-core machine two OpenMP threads spin-waiting for each other made the tiny
# model up to 50x slower.
ENV = tool_env() | {"OMP_NUM_THREADS": "1"}


def prepared_project(root: Path, tiny_model_dir: Path) -> stages.Context:
    root.mkdir()
    overrides = tiny_overrides(tiny_model_dir) | {"train.checkpoint_steps": CHECKPOINT_STEPS}
    write_params(root, overrides)
    ctx = stages.load_context(root)
    stages.step_fetch(ctx)
    stages.step_validate(ctx)
    stages.step_prepare(ctx)
    return ctx


def train_stage(ctx: stages.Context) -> subprocess.CompletedProcess[str]:
    """`tuneops stage train`, as `dvc repro` runs it."""
    command = [sys.executable, "-m", "tuneops.cli", "--root", str(ctx.paths.root), "stage", "train"]
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, check=False)


def mid_epoch_step(ctx: stages.Context) -> tuple[int, int]:
    """(steps per epoch, the first step checkpoint inside the second epoch)."""
    rows = read_manifest(ctx.paths.data_prepared)["rows"]["train"]
    per_epoch = math.ceil(rows / ctx.params.train.batch_size)
    pause = (per_epoch // CHECKPOINT_STEPS + 1) * CHECKPOINT_STEPS
    assert per_epoch < pause < 2 * per_epoch and pause % per_epoch
    return per_epoch, pause


def eval_history(checkpoint: Path) -> list[dict[str, float]]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    keys = ("epoch", "eval_loss", "eval_accuracy", "eval_macro_f1")
    return [{k: e[k] for k in keys} for e in state["log_history"] if "eval_loss" in e]


def max_weight_diff(a: Path, b: Path) -> float:
    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert left.keys() == right.keys()
    return max(float(np.abs(left[k] - right[k]).max()) for k in left)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    """An uninterrupted run; a run killed mid-epoch after a step checkpoint; its rerun."""
    base = tmp_path_factory.mktemp("resume")
    reference = prepared_project(base / "reference", tiny_model_dir)
    killed = prepared_project(base / "killed", tiny_model_dir)
    per_epoch, pause = mid_epoch_step(killed)
    uninterrupted = train_stage(reference)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    marker = base / "paused-after-checkpoint"
    argv = [str(killed.paths.root), str(pause), str(marker)]
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.train_worker", *argv],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert worker.poll() is None, worker.stderr.read().decode()[-3000:] if worker.stderr else ""
        assert time.monotonic() < deadline, "the worker never reached its checkpoint"
        time.sleep(0.2)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=60)
    after_kill = {
        "returncode": worker.returncode,
        "checkpoints": sorted(p.name for p in killed.paths.checkpoints.iterdir()),
        "candidate": killed.paths.candidate.exists(),
    }
    return {
        "reference": reference,
        "killed": killed,
        "pause": pause,
        "per_epoch": per_epoch,
        "after_kill": after_kill,
        "rerun": train_stage(killed),
    }


def test_the_kill_left_a_step_checkpoint_mid_epoch_and_no_candidate(runs: dict[str, Any]) -> None:
    after_kill = runs["after_kill"]
    assert after_kill["returncode"] == -signal.SIGKILL
    assert f"checkpoint-{runs['pause']}" in after_kill["checkpoints"]
    assert f"checkpoint-{runs['per_epoch']}" in after_kill["checkpoints"]  # the epoch-end one
    assert "resume.json" in after_kill["checkpoints"]
    assert after_kill["candidate"] is False


def test_the_rerun_resumes_from_the_last_checkpoint_and_ends_like_an_uninterrupted_run(
    runs: dict[str, Any], record_property: Any
) -> None:
    rerun, pause = runs["rerun"], runs["pause"]
    reference, killed = runs["reference"].paths, runs["killed"].paths
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    [line] = [line for line in rerun.stdout.splitlines() if line.startswith("train: ")]
    described = json.loads(line.removeprefix("train: "))
    ours = json.loads((killed.candidate / "training_summary.json").read_text())
    theirs = json.loads((reference.candidate / "training_summary.json").read_text())
    last = f"checkpoint-{theirs['global_steps']}"
    diffs = {
        "candidate": max_weight_diff(reference.candidate, killed.candidate),
        "last checkpoint": max_weight_diff(reference.checkpoints / last, killed.checkpoints / last),
    }
    record(
        record_property,
        "fault",
        "SIGKILL mid-epoch, then tuneops stage train",
        "survived" if described["resumed_from"] == f"checkpoint-{pause}" else "not resumed",
        f"killed after checkpoint-{pause} (epoch 2 of 2, {runs['per_epoch']} steps per "
        f"epoch); rerun resumed from {described['resumed_from']}; max |weight diff| vs an "
        f"uninterrupted run: candidate {diffs['candidate']:.1e}, {last} "
        f"{diffs['last checkpoint']:.1e}",
    )
    assert described["resumed_from"] == f"checkpoint-{pause}"
    assert ours["global_steps"] == theirs["global_steps"]
    assert diffs == {"candidate": 0.0, "last checkpoint": 0.0}
    assert eval_history(killed.checkpoints / last) == eval_history(reference.checkpoints / last)
    keys = ("loss", "accuracy", "macro_f1", "epoch")
    assert {k: ours["best_validation"][k] for k in keys} == {
        k: theirs["best_validation"][k] for k in keys
    }
    assert not (killed.checkpoints / "resume.json").exists()  # finished: nothing to resume


def test_mlflow_tags_the_resumed_run_and_marks_the_killed_one(runs: dict[str, Any]) -> None:
    killed = runs["killed"]
    summary = json.loads((killed.paths.candidate / "training_summary.json").read_text())
    client = store_client(killed.tracking_uri)
    resumed = client.get_run(summary["mlflow_run_id"])
    assert resumed.data.tags["train.resumed_from"] == f"checkpoint-{runs['pause']}"
    interrupted = client.get_run(resumed.data.tags["train.resumed_run_id"])
    assert interrupted.info.status == "KILLED"
    assert interrupted.info.run_id != resumed.info.run_id


def test_only_an_unfinished_run_with_the_same_key_resumes(tmp_path: Path) -> None:
    from pipeline.training import checkpoints

    folder = tmp_path / "checkpoints"

    def interrupted_run() -> None:
        (folder / "checkpoint-5").mkdir(parents=True)
        for name in checkpoints.COMPLETE_MARKERS:
            (folder / "checkpoint-5" / name).write_text("{}")
        (folder / "checkpoint-10").mkdir()  # cut off mid-save: no trainer_state.json
        (folder / "resume.json").write_text(json.dumps({"key": "same", "run_id": "r1"}))

    interrupted_run()
    assert checkpoints.start(folder, "other params or data", None) is None
    assert sorted(p.name for p in folder.iterdir()) == ["resume.json"]  # cleared

    for path in folder.iterdir():
        path.unlink()
    interrupted_run()
    assert checkpoints.start(folder, "same", "r2") == checkpoints.Resume(
        folder / "checkpoint-5", "r1"
    )
    assert not (folder / "checkpoint-10").exists()  # incomplete: never resumed from
    checkpoints.finish(folder)
    assert checkpoints.start(folder, "same", "r3") is None  # finished: nothing to resume
