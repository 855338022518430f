"""Each model file of a bundle (fp32, int8 with uint8 weights, int8_s8 with int8 weights)
timed on this CPU at batch 1 and batch 32, tokenisation included (OnnxClassifier.logits),
with the file the runtime would pick here and why (issue 20).

    python benchmarks/int8_variants.py [--bundle models/export]
        [--texts data/prepared/test.parquet] [--rows 200] [--quantize-missing]
        [--out benchmarks/results/int8_variants.json]

    python benchmarks/int8_variants.py --requantize [--per-channel] [--rows 0] ...

--quantize-missing copies the bundle to a temporary folder and builds the int8 variants
it lacks from its model.onnx (pipeline.quantize, as export does), so a bundle from before
the variants can be measured. --requantize builds every variant of quantize.VARIANTS from
model.onnx twice, with and without reduce_range (7-bit weights, onnxruntime's remedy for
the u8s8 saturation of CPUs without VNNI), and with --per-channel also per channel, each
a row of its own (issue 20). Every file is scored as export scores it: label agreement
with fp32 and the task's primary metric (macro-F1) on the --texts split (the task's test
split, batches of 64). --rows 0 skips the timing.
Speeds are ratios to fp32 measured in the same run: absolute times drift on shared machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from cpu import machine  # benchmarks/cpu.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import quantize, tasks  # noqa: E402
from tuneops.runtime import OnnxClassifier, cpu_flags, load_bundle  # noqa: E402


def add_missing_variants(bundle: Path) -> list[str]:
    """Quantise the variants of quantize.VARIANTS that `bundle` has no file for, and record
    them in its bundle.json as kept (unscored); the names built."""
    meta = json.loads((bundle / "bundle.json").read_text())
    built = []
    for variant in quantize.VARIANTS:
        if (bundle / variant.file).exists():
            entry = meta["models"].setdefault(variant.name, {"kept": True, "file": variant.file})
        else:
            quantize.quantize_int8(
                bundle / "model.onnx", bundle / variant.file, variant.weight_type, False
            )
            entry = meta["models"][variant.name] = {"kept": True, "file": variant.file}
            built.append(variant.name)
        entry |= {
            "weight_type": variant.weight_type,
            "cpu_flags": list(variant.cpu_flags),
            "meant_for": variant.meant_for,
        }
    (bundle / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
    return built


def requantize(bundle: Path, per_channel: bool) -> list[dict[str, Any]]:
    """Every variant of quantize.VARIANTS rebuilt from `bundle`'s model.onnx with and
    without reduce_range (and per channel with `per_channel`): one file each in `bundle`,
    named by its settings; their rows (model, file, weight_type, per_channel, reduce_range)."""
    built = []
    for variant in quantize.VARIANTS:
        for channel in (False, True) if per_channel else (False,):
            for reduced in (False, True):
                stem = variant.file.removesuffix(".onnx")
                file = f"{stem}{'.pc' if channel else ''}{'.rr' if reduced else ''}.onnx"
                quantize.quantize_int8(
                    bundle / "model.onnx", bundle / file, variant.weight_type, channel, reduced
                )
                built.append(
                    {
                        "model": variant.name,
                        "file": file,
                        "weight_type": variant.weight_type,
                        "per_channel": channel,
                        "reduce_range": reduced,
                    }
                )
    return built


def measure(bundle: Path, name: str, texts: list[str], rows: int, threads: int) -> dict[str, Any]:
    """Size and (rows > 0) batch-1 and batch-32 speed of one model file of `bundle`."""
    classifier = OnnxClassifier(bundle, threads=threads, model=name)
    figures: dict[str, Any] = {
        "file": classifier.model_file,
        "mb": (bundle / classifier.model_file).stat().st_size / 2**20,
    }
    if rows <= 0:
        return figures
    for text in texts[:10]:
        classifier.logits([text])  # warm-up
    timings = []
    for text in texts[:rows]:
        started = time.perf_counter()
        classifier.logits([text])
        timings.append(time.perf_counter() - started)
    batch = texts[:rows]
    started = time.perf_counter()
    for i in range(0, len(batch), 32):
        classifier.logits(batch[i : i + 32], batch_size=32)
    batch32_s = time.perf_counter() - started
    return figures | {
        "batch1_p50_ms": float(np.percentile(timings, 50) * 1000),
        "batch1_p95_ms": float(np.percentile(timings, 95) * 1000),
        "batch1_texts_per_s": len(timings) / sum(timings),
        "batch32_texts_per_s": len(batch) / batch32_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models/export")
    parser.add_argument("--texts", type=Path, default=REPO / "data/prepared/test.parquet")
    parser.add_argument("--rows", type=int, default=200, help="texts timed per batch size")
    parser.add_argument("--quantize-missing", action="store_true")
    parser.add_argument("--requantize", action="store_true", help="with/without reduce_range")
    parser.add_argument("--per-channel", action="store_true", help="with --requantize")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/int8_variants.json")
    args = parser.parse_args(argv)
    if args.texts.name != "test.parquet":
        parser.error("--texts: a prepared test.parquet (its folder's split is scored)")
    threads = os.cpu_count() or 1
    texts = pd.read_parquet(args.texts)["text"].astype(str).tolist()
    with tempfile.TemporaryDirectory(prefix="int8-variants-") as scratch:
        bundle, built = args.bundle, []
        if args.quantize_missing or args.requantize:
            bundle = Path(scratch) / "bundle"
            shutil.copytree(args.bundle, bundle)
        if args.quantize_missing:
            built = add_missing_variants(bundle)
        meta = json.loads((bundle / "bundle.json").read_text())
        if args.requantize:
            rows = requantize(bundle, args.per_channel)
            built = [r["file"] for r in rows]
        else:
            names = [n for n in ("int8", "int8_s8") if (meta["models"].get(n) or {}).get("file")]
            rows = [{"model": n, "file": meta["models"][n]["file"]} for n in names]
            for r in rows:
                found = meta["models"][r["model"]]
                r |= {k: found.get(k) for k in ("weight_type", "per_channel", "reduce_range")}
        rows = [{"model": "fp32", "file": "model.onnx"}, *rows]
        # Scored as export scores a file (pipeline.export._int8): the task's test split.
        task = tasks.get(meta.get("task", "text-classification"))
        labels = json.loads((bundle / "labels.json").read_text())
        split = task.test_split(args.texts.parent, labels)
        results, predicted = [], {}
        for row in rows:
            figures = row | measure(bundle, row["file"], texts, args.rows, threads)
            predicted[row["file"]] = split.rescore(load_bundle(bundle, model=row["file"]))
            metrics, _ = split.report(predicted[row["file"]])
            figures[task.primary_metric] = float(metrics[task.primary_metric])
            figures["label_agreement_with_fp32"] = split.agreement(
                predicted[row["file"]], predicted["model.onnx"]
            )
            results.append(figures)
        fp32 = results[0]
        for figures in results[1:] if args.rows > 0 else []:
            for batch in ("batch1", "batch32"):
                figures[f"{batch}_vs_fp32"] = (
                    figures[f"{batch}_texts_per_s"] / fp32[f"{batch}_texts_per_s"]
                )
        choice = OnnxClassifier(bundle, threads=threads).choice
    report = {
        "machine": machine(),
        "threads": threads,
        "bundle": str(args.bundle),
        "texts": len(texts),
        "rows_timed": min(args.rows, len(texts)),
        "quantized_here": built,
        "runtime_pick": {"model": choice.model, "reason": choice.reason},
        "cpu_has": sorted(cpu_flags() & set(quantize.VNNI_FLAGS)),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["machine"]))
    print(f"runtime pick here: {choice.model} ({choice.reason})")
    metric = task.primary_metric
    print(f"file                     weights per_ch reduce   MB  agree  {metric}", end="")
    print("  b1 p50 ms  b1 vs fp32  b32 vs fp32" if args.rows > 0 else "")
    for r in results:
        print(
            f"{r['file']:24} {r.get('weight_type') or 'fp32':7} "
            f"{r.get('per_channel', '')!s:6} {r.get('reduce_range', '')!s:6} "
            f"{r['mb']:5.1f} {r['label_agreement_with_fp32']:6.2%}  {r[metric]:.4f}",
            end="",
        )
        if args.rows > 0:
            print(
                f"  {r['batch1_p50_ms']:9.2f}  {r.get('batch1_vs_fp32', 1.0):9.2f}x "
                f"{r.get('batch32_vs_fp32', 1.0):10.2f}x",
                end="",
            )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
