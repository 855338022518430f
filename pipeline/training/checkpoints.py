"""Resuming an interrupted training run from its last complete checkpoint.

The train step saves Trainer checkpoints (weights, optimizer, scheduler, RNG states,
trainer_state.json) at the end of every epoch and, with `train.checkpoint_steps`, every N
optimiser steps in between. `resume.json` beside them holds a key of everything the run
depends on (model and train config, task, prepared-data fingerprint) and is removed when
the run finishes; so a killed run is resumed only by a run of the same key, and a
finished or different run starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from tuneops.config import ModelConfig, TrainConfig
from tuneops.paths import atomic_write_text

RESUME_FILE = "resume.json"
EPOCH_RNG_FILE = "epoch_rng.safetensors"
# Trainer writes trainer_state.json last, then EpochStartRng its file: a checkpoint
# without both was cut off mid-save.
COMPLETE_MARKERS = ("trainer_state.json", EPOCH_RNG_FILE)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Resume:
    checkpoint: Path  # the last complete checkpoint of the interrupted run
    run_id: str | None  # that run's tracker (MLflow) run id, if it had one


def run_key(model_cfg: ModelConfig, cfg: TrainConfig, task: str, manifest: dict[str, Any]) -> str:
    """sha256 of what a training run's result depends on."""
    blob = json.dumps(
        {
            "model": model_cfg.model_dump(mode="json"),
            "train": cfg.model_dump(mode="json"),
            "task": task,
            "data": manifest["fingerprint"],
            "labels": manifest["labels"],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def start(
    checkpoints_dir: Path, key: str, run_id: str | None, writer: bool = True
) -> Resume | None:
    """The checkpoint to resume from (an interrupted run with this key), or None after
    clearing the folder for a fresh run. Either way, records this run in resume.json.

    Only the `writer` (rank 0 of a data-parallel run) clears and records; the other
    processes, run after it, only find the checkpoint it chose.
    """
    resume = _resumable(checkpoints_dir, key, writer)
    if not writer:
        return resume
    if resume is None:
        shutil.rmtree(checkpoints_dir, ignore_errors=True)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        checkpoints_dir / RESUME_FILE, json.dumps({"key": key, "run_id": run_id}) + "\n"
    )
    return resume


def finish(checkpoints_dir: Path) -> None:
    """The run completed: nothing left to resume."""
    (checkpoints_dir / RESUME_FILE).unlink(missing_ok=True)


def _resumable(checkpoints_dir: Path, key: str, writer: bool) -> Resume | None:
    marker = checkpoints_dir / RESUME_FILE
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or recorded.get("key") != key:
        return None
    complete = []
    for folder in checkpoints_dir.iterdir():
        match = _CHECKPOINT.match(folder.name)
        if match and folder.is_dir():
            if all((folder / name).is_file() for name in COMPLETE_MARKERS):
                complete.append((int(match.group(1)), folder))
            elif writer:
                shutil.rmtree(folder)  # cut off mid-save: it must not be resumed or kept
    if not complete:
        return None
    return Resume(max(complete)[1], recorded.get("run_id"))


class StepCheckpoints(TrainerCallback):
    """A resumable checkpoint every `steps` optimiser steps, between the per-epoch ones.

    Evaluation, early stopping and the choice of the best checkpoint stay per epoch.
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step % self.steps == 0:
            control.should_save = True
        return control


class EpochStartRng(TrainerCallback):
    """Makes a mid-epoch resumption see the batches the killed run would have seen.

    The Trainer draws an epoch's batch order (the length-grouped sampler) from torch's
    global RNG when the epoch starts. Resuming mid-epoch, it draws it from the new
    process's RNG, so the rest of the epoch would get other batches. This records the
    RNG state at each epoch start, saves it with every checkpoint (safetensors: nothing
    is unpickled) and restores it at the start of the resumed epoch, before the order is
    drawn; the Trainer then restores the checkpoint's own RNG state (dropout) as usual.
    Training that is not resumed is unchanged: nothing is drawn or reseeded.
    """

    def __init__(self, resume_from: Path | None) -> None:
        self.pending: tuple[int, torch.Tensor] | None = None
        if resume_from is not None:
            saved = load_file(str(resume_from / EPOCH_RNG_FILE))
            self.pending = (int(saved["epoch"].item()), saved["torch_cpu_rng"])
        self.current: tuple[int, torch.Tensor] | None = None

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        epoch = int((state.epoch or 0.0) + 1e-9)  # the epoch that starts now, from 0
        if self.pending is not None and self.pending[0] == epoch:
            torch.set_rng_state(self.pending[1])
        self.pending = None
        self.current = (epoch, torch.get_rng_state())

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.current is None or not state.is_world_process_zero:
            return  # rank 0 writes the checkpoints
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        epoch, rng = self.current
        save_file(
            {"epoch": torch.tensor([epoch]), "torch_cpu_rng": rng},
            str(folder / EPOCH_RNG_FILE),
        )
