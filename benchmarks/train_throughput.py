"""Training throughput and orchestration overhead, against a bare HF Trainer in the same run.

Measures, on the default model and the bundled data (a slice, see --rows):
  1. tokens/s and model-FLOPs utilisation (MFU) of tuneops' train step (inside the flow);
  2. the same for a bare Trainer script with the same data and hyperparameters;
  3. the wall time of the whole Prefect flow (validate → register, tracking included)
     against the bare script's wall time (load, tokenise, train, score the test split).
Results are ratios to the bare script, because absolute times on shared machines drift.
MFU is against the fp32 matmul throughput measured on this machine in the same run (a CPU
has no single datasheet peak); on CUDA it is against the GPU's datasheet bf16 peak
(dense, from the table below; --peak-tflops for others), the measured bf16 matmul
throughput reported beside it.

    python benchmarks/train_throughput.py [--rows 2000] [--out benchmarks/results]
    # a GPU: BERT-base-sized, batches big enough to fill it
    python benchmarks/train_throughput.py --rows 10000 --bert-base \
        --set train.batch_size=128 --set train.max_length=128
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tuneops import quiet

quiet.apply()

from datasets import load_dataset  # noqa: E402
from transformers import (  # noqa: E402
    DataCollatorWithPadding,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)

from flows.training import training_flow  # noqa: E402
from pipeline.training.modeling import (  # noqa: E402
    load_classifier,
    load_tokenizer,
    pick_device,
    predict_logits,
    resolve_model_path,
)
from tuneops import stages  # noqa: E402
from tuneops.cli import overrides as cli_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# NVIDIA datasheets: dense bf16 tensor-core TFLOP/s (without sparsity), by the name
# torch.cuda.get_device_name() reports; the first match wins.
BF16_PEAK_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.5),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
)


def matmul_peak_flops(device: str, size: int = 2048, repeats: int = 10) -> float:
    """Achieved FLOP/s of a large square matmul: the practical peak MFU is measured against."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def datasheet_peak_flops(device: str) -> float | None:
    """The GPU's dense bf16 peak (FLOP/s) from BF16_PEAK_TFLOPS; None on CPU or unknown."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((tflops * 1e12 for key, tflops in BF16_PEAK_TFLOPS if key in name), None)


def bert_base(folder: Path, model: str) -> Path:
    """A randomly initialised BERT-base-sized encoder (12 layers x 768, 110 M parameters)
    with `model`'s tokenizer: the size the MFU target is stated for."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522)).save_pretrained(folder)
    load_tokenizer(resolve_model_path(model)).save_pretrained(folder)
    return folder


def train_flops_per_token(model: PreTrainedModel, seq_len: float) -> float:
    """6 x non-embedding parameters + attention (12 x layers x hidden x sequence)."""
    config = model.config
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    dense = sum(p.numel() for p in model.parameters()) - embedding
    return 6 * dense + 12 * config.num_hidden_layers * config.hidden_size * seq_len


def bare_trainer(ctx: stages.Context, out: Path) -> dict[str, float]:
    """The reference: what a user would write with transformers alone."""
    started = time.perf_counter()
    cfg, labels = ctx.params.train, stages.read_manifest(ctx.paths.data_prepared)["labels"]
    path = resolve_model_path(ctx.params.model.name_or_path)
    tokenizer = load_tokenizer(path)
    model = load_classifier(path, tuple(labels), ctx.params.model.num_hidden_layers)
    files = {s: str(ctx.paths.data_prepared / f"{s}.parquet") for s in ("train", "test")}
    data = load_dataset("parquet", data_files=files, cache_dir=str(out / "cache"))
    data = data.map(
        lambda b: (
            tokenizer(b["text"], truncation=True, max_length=cfg.max_length)
            | {"labels": b["label_id"]}
        ),
        batched=True,
        remove_columns=data["train"].column_names,
    )
    args = TrainingArguments(
        output_dir=str(out / "bare"),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        seed=cfg.seed,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    train_started = time.perf_counter()
    trainer.train()
    train_runtime = time.perf_counter() - train_started
    test_texts = load_dataset("parquet", data_files=files["test"], cache_dir=str(out / "cache"))[
        "train"
    ]["text"]
    predict_logits(model, tokenizer, list(test_texts), cfg.max_length, 128)
    tokens = sum(len(ids) for ids in data["train"]["input_ids"]) * cfg.epochs
    return {
        "train_runtime_s": train_runtime,
        "tokens_per_s": tokens / train_runtime,
        "wall_s": time.perf_counter() - started,
        "mean_seq_len": tokens / cfg.epochs / len(data["train"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2000, help="raw rows in the slice")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a params.yaml override, e.g. train.batch_size=128 (a GPU wants big batches)",
    )  # fmt: skip
    parser.add_argument("--bert-base", action="store_true", help="a BERT-base-sized model")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tuneops-bench-"))
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    # A speed benchmark: the gate still runs (its cost is in the wall time) but judges nothing.
    overrides: dict[str, Any] = {
        "data.max_rows": args.rows,
        "gate.floors": {},
        "gate.beat_baselines": False,
        "gate.per_class": False,
    } | cli_overrides(args.overrides)
    if args.bert_base:
        model = stages.load_context(work, overrides=overrides).params.model.name_or_path
        overrides["model.name_or_path"] = str(bert_base(work / "bert-base", model))
    ctx = stages.load_context(work, overrides=overrides)
    device = pick_device()
    measured_peak = matmul_peak_flops(device)
    peak, peak_source = measured_peak, "the measured matmul peak"
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops * 1e12, "--peak-tflops"
    elif sheet := datasheet_peak_flops(device):
        peak, peak_source = sheet, f"{torch.cuda.get_device_name()} bf16 datasheet peak"

    flow_started = time.perf_counter()
    summary = training_flow(root=str(work), overrides=overrides)
    flow_wall = time.perf_counter() - flow_started
    ours = json.loads((work / "models/candidate/training_summary.json").read_text())

    bare = bare_trainer(ctx, work)
    model = load_classifier(work / "models/candidate")
    flops_token = train_flops_per_token(model, bare["mean_seq_len"])
    rows = {
        "bare HF Trainer script": {
            "tokens_per_s": bare["tokens_per_s"],
            "train_s": bare["train_runtime_s"],
            "wall_s": bare["wall_s"],
        },
        "tuneops flow (train step)": {
            "tokens_per_s": ours["tokens_per_s"],
            "train_s": ours["train_runtime_s"],
            "wall_s": flow_wall,
        },
    }
    for row in rows.values():
        row["mfu"] = row["tokens_per_s"] * flops_token / peak
        row["tokens_per_s_vs_bare"] = row["tokens_per_s"] / bare["tokens_per_s"]
        row["wall_vs_bare"] = row["wall_s"] / bare["wall_s"]

    result = {
        "benchmark": "train_throughput",
        "device": device,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "model": ctx.params.model.name_or_path,
        "rows": summary.rows,
        "epochs": ctx.params.train.epochs,
        "batch_size": ctx.params.train.batch_size,
        "max_length": ctx.params.train.max_length,
        "mean_seq_len": bare["mean_seq_len"],
        "train_flops_per_token": flops_token,
        "measured_matmul_peak_flops": measured_peak,
        "mfu_peak_flops": peak,
        "mfu_peak_source": peak_source,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "precision": ours["precision"],
        "test_macro_f1": summary.metrics["test_macro_f1"],
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train_throughput-{device}.json"
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(
        f"\n{ctx.params.model.name_or_path} on {device} ({result['machine']}), "
        f"{summary.rows['train']} train rows, mean {bare['mean_seq_len']:.1f} tokens, "
        f"matmul peak {measured_peak / 1e9:.0f} GFLOP/s measured, MFU against "
        f"{peak / 1e9:,.0f} GFLOP/s ({peak_source}), "
        f"{ours['precision']}\n"
    )
    print(
        f"{'':28} {'tokens/s':>9} {'vs bare':>8} {'MFU':>6} {'train s':>8} {'wall s':>7} "
        f"{'vs bare':>8}"
    )
    for name, row in rows.items():
        print(
            f"{name:28} {row['tokens_per_s']:>9.0f} {row['tokens_per_s_vs_bare']:>7.2f}x "
            f"{row['mfu']:>6.1%} {row['train_s']:>8.1f} {row['wall_s']:>7.1f} "
            f"{row['wall_vs_bare']:>7.2f}x"
        )
    print(f"\nwrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
