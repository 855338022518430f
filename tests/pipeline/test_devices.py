"""Precision and Trainer options per device: the CPU path adds nothing, CUDA gets the fast path.

The CUDA cases are a simulation: this machine has no GPU, so torch's capability queries
(`is_bf16_supported`, `is_torch_tf32_available`) are monkeypatched and only the options
tuneops derives from them are checked; no test here trains on a GPU.
"""

import pytest
import torch
import transformers.utils

from pipeline.training.devices import resolve_precision, trainer_options
from tuneops.cli import main as cli_main
from tuneops.config import TrainConfig
from tuneops.errors import ConfigError


def test_one_cpu_process_trains_in_fp32_with_no_extra_trainer_options() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "mps") == "fp32"
    assert trainer_options(TrainConfig(), "cpu", 1) == {}


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_precision_on_cuda_is_bf16_where_the_gpu_has_it_else_fp16(
    bf16: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert resolve_precision("auto", "cuda") == ("bf16" if bf16 else "fp16")
    assert resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_precision("fp16", "cuda") == "fp16"


def test_a_half_precision_the_device_lacks_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match=r"train\.precision=bf16 needs a CUDA GPU.*on cpu"):
        resolve_precision("bf16", "cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.raises(ConfigError, match="this GPU has no bf16"):
        resolve_precision("bf16", "cuda")


def test_cuda_gets_tf32_fused_adamw_and_loader_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transformers.utils, "is_torch_tf32_available", lambda: True)
    cfg = TrainConfig(dataloader_workers=2, torch_compile=True)
    assert trainer_options(cfg, "cuda", 1) == {
        "optim": "adamw_torch_fused",
        "dataloader_num_workers": 2,
        "dataloader_persistent_workers": True,
        "tf32": True,
        "torch_compile": True,
    }


def test_several_processes_train_data_parallel_with_each_process_mean_loss() -> None:
    shared = {"average_tokens_across_devices": False, "ddp_find_unused_parameters": False}
    assert trainer_options(TrainConfig(), "cpu", 2) == shared | {
        "use_cpu": True,
        "ddp_backend": "gloo",
    }
    assert shared.items() <= trainer_options(TrainConfig(), "cuda", 4).items()


def test_only_the_train_stage_runs_under_a_data_parallel_launcher(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli_main(["run"]) == 2
    assert "only `tuneops stage train` runs data-parallel" in capsys.readouterr().err
