"""Fine-tuning strategies compared on the same data slice, seed and budget, in one run.

Prepares one slice of the bundled data, then trains and exports each strategy in its own
process (so the peak memory of one does not carry into the next) with the real packaged
model, and prints one table: test macro-F1 (of the exported fp32 ONNX model, on the whole
test split), trainable %, peak memory, tokens/s, wall time (train + export), ONNX size.

    python benchmarks/strategies.py [--rows 2000] [--epochs 1] [--out benchmarks/results]

Every strategy gets the same epochs, batch size, seed, warmup and schedule; the learning
rate is each strategy's usual one (a frozen encoder or an adapter needs a larger step).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tuneops import quiet

quiet.apply()

from cpu import machine  # noqa: E402  (benchmarks/cpu.py)

from tuneops.config import load_params  # noqa: E402
from tuneops.paths import Paths  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# name -> params overrides on top of the shared ones.
STRATEGIES: dict[str, dict[str, Any]] = {
    "full": {"train.strategy": "full", "train.learning_rate": 1.0e-4},
    "freeze (head only)": {
        "train.strategy": "freeze",
        "train.freeze": {"trainable_layers": 0},
        "train.learning_rate": 1.0e-3,
    },
    "freeze (top 2 layers)": {
        "train.strategy": "freeze",
        "train.freeze": {"trainable_layers": 2},
        "train.learning_rate": 5.0e-4,
    },
    "lora (r=8, query+value)": {
        "train.strategy": "lora",
        "train.lora": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]},
        "train.learning_rate": 1.0e-3,
    },
    "bitfit": {"train.strategy": "bitfit", "train.learning_rate": 1.0e-3},
}


def shared_overrides(rows: int, epochs: float) -> dict[str, Any]:
    return {"data.max_rows": rows, "data.hold_back_rows": 0, "train.epochs": epochs}


def prepare_slice(work: Path, overrides: dict[str, Any]) -> None:
    from pipeline import tasks
    from pipeline.fetch_data import fetch_data
    from pipeline.prepare import prepare

    params = load_params(work / "params.yaml", overrides)
    paths = Paths(work)
    fetched = fetch_data(params.data, paths.data_raw)
    task = tasks.get(params.task)
    prepare(
        task, params.data, params.prepare, fetched.labels, fetched.dataset_dir, paths.data_prepared
    )


def run_one(work: Path, name: str, overrides: dict[str, Any], out: Path) -> None:
    """Train and export one strategy (runs in its own process); writes its row to `out`."""
    from pipeline import tasks
    from pipeline.export import export
    from pipeline.train import train

    params = load_params(work / "params.yaml", overrides | STRATEGIES[name])
    paths = Paths(work)
    started = time.perf_counter()
    task = tasks.get(params.task)
    result = train(
        task,
        params.model,
        params.train,
        paths.data_prepared,
        paths.candidate,
        paths.checkpoints,
        paths.data_cache,
    )
    export_cfg = params.export.model_copy(update={"quantize_int8": False})
    exported = export(
        task,
        export_cfg,
        params.train.max_length,
        paths.candidate,
        paths.data_prepared,
        paths.export,
    )
    row = {
        "strategy": params.train.strategy,
        "learning_rate": params.train.learning_rate,
        "test_macro_f1": exported.fp32_f1,
        "test_accuracy": exported.fp32_accuracy,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "trainable_pct": 100 * result.trainable_params / result.total_params,
        "peak_memory_mb": result.peak_memory_mb,
        "tokens_per_s": result.tokens_per_s,
        "train_s": result.train_runtime_s,
        "wall_s": time.perf_counter() - started,
        "onnx_mb": exported.onnx_bytes / 2**20,
        "parity_max_abs_diff": exported.parity_max_abs_diff,
        "best_validation_macro_f1": result.best_validation.get("macro_f1"),
        "device": result.device,
    }
    out.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| strategy | test macro-F1 | trainable % | peak memory (MB) | tokens/s | wall s "
        "| ONNX MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['test_macro_f1']:.4f} | {r['trainable_pct']:.3g} | "
            f"{r['peak_memory_mb']:.0f} | {r['tokens_per_s']:.0f} | {r['wall_s']:.1f} | "
            f"{r['onnx_mb']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2000, help="raw rows in the slice")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--only", choices=sorted(STRATEGIES), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = shared_overrides(args.rows, args.epochs)

    if args.only:  # the per-strategy worker process
        run_one(args.work, args.only, overrides, args.work / "row.json")
        return

    work = Path(tempfile.mkdtemp(prefix="tuneops-strategies-"))
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    prepare_slice(work, overrides)
    rows: dict[str, dict[str, Any]] = {}
    for name in STRATEGIES:
        print(f"training {name} …", flush=True)
        command = [sys.executable, __file__, "--only", name, "--work", str(work)]
        command += ["--rows", str(args.rows), "--epochs", str(args.epochs)]
        subprocess.run(command, check=True)
        rows[name] = json.loads((work / "row.json").read_text(encoding="utf-8"))

    params = load_params(work / "params.yaml", overrides)
    prepared = json.loads((work / "data/prepared/manifest.json").read_text(encoding="utf-8"))
    result = {
        "benchmark": "strategies",
        "command": f"python benchmarks/strategies.py --rows {args.rows} --epochs {args.epochs:g}",
        "machine": machine(),
        "model": params.model.name_or_path,
        "rows": prepared.get("rows"),
        "epochs": args.epochs,
        "batch_size": params.train.batch_size,
        "max_length": params.train.max_length,
        "seed": params.train.seed,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "strategies.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\n{params.model.name_or_path}, rows {result['rows']}, {args.epochs:g} epoch(s)\n")
    print(table(rows))
    print(f"\nwrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
