"""Where the train step runs: its precision, the data-parallel launch, the GPU-only settings.

One CPU process is the baseline and stays exactly as it was: fp32, no extra Trainer
options. `torchrun` and `accelerate launch` start N copies of the train step and tell each
one so in WORLD_SIZE and RANK (the launchers' contract; read here the way `pick_device`
reads the hardware); the HF Trainer then wraps the model in DistributedDataParallel.
torch is imported inside the functions: the CLI asks `world_size()` before every command,
`tuneops predict` included, which must run without torch.
"""

from __future__ import annotations

import os
from typing import Any

from tuneops.config import TrainConfig
from tuneops.errors import ConfigError


def world_size() -> int:
    """Processes training together (1 unless started by torchrun / accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank() -> int:
    """This process's global rank; rank 0 alone logs, writes the candidate and registers."""
    return int(os.environ.get("RANK", "0"))


def resolve_precision(requested: str, device: str) -> str:
    """`train.precision` on this device: auto is bf16 on a CUDA GPU that has it, fp16 (with
    loss scaling) on one that does not, and fp32 anywhere else."""
    import torch

    if requested == "auto":
        if device != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested != "fp32" and device != "cuda":
        raise ConfigError(
            f"train.precision={requested} needs a CUDA GPU; this machine trains on {device} "
            "(use auto or fp32)"
        )
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision=bf16: this GPU has no bf16 (use fp16 or auto)")
    return requested


def trainer_options(cfg: TrainConfig, device: str, processes: int) -> dict[str, Any]:
    """TrainingArguments beyond the one-CPU-process baseline's (empty there).

    CUDA: TF32 matmuls for what autocast leaves in fp32 (Ampere and newer), fused AdamW,
    worker processes feeding pinned memory. CPU with several processes: DDP over gloo.
    """
    from transformers.utils import is_torch_tf32_available

    options: dict[str, Any] = {}
    if cfg.torch_compile:
        options["torch_compile"] = True
    if device == "cuda":
        options |= {
            "optim": "adamw_torch_fused",
            "dataloader_num_workers": cfg.dataloader_workers,
            "dataloader_persistent_workers": cfg.dataloader_workers > 0,
        }
        if is_torch_tf32_available():
            options["tf32"] = True
    elif processes > 1:
        # Without use_cpu, accelerate finds no GPU and no CPU request under torchrun and
        # runs N independent trainings instead of one data-parallel one.
        options |= {"use_cpu": True, "ddp_backend": "gloo"}
    if processes > 1:
        options |= {
            # The Trainer multiplies the loss by the world size for models whose forward
            # takes **kwargs, expecting them to divide by the global token count; BERT's
            # sequence-classification loss is a plain mean, so its loss and gradients would
            # come out N times too large. Each process's mean, averaged by DDP, is exact.
            "average_tokens_across_devices": False,
            # Every trainable parameter is used in each forward pass (frozen ones are not
            # trainable); the search for unused ones costs a graph traversal per step.
            "ddp_find_unused_parameters": False,
        }
    return options
