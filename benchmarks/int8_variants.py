"""Each model file of a bundle (fp32, int8 with uint8 weights, int8_s8 with int8 weights)
timed on this CPU at batch 1 and batch 32, tokenisation included (OnnxClassifier.logits),
with the file the runtime would pick here and why (issue 20).

    python benchmarks/int8_variants.py [--bundle models/export]
        [--texts data/prepared/test.parquet] [--rows 200] [--quantize-missing]
        [--out benchmarks/results/int8_variants.json]

--quantize-missing copies the bundle to a temporary folder and builds the int8 variants
it lacks from its model.onnx (pipeline.quantize, as export does), so a bundle from before
the variants can be measured; those files are not scored on the test split here.
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

from pipeline import quantize  # noqa: E402
from tuneops.runtime import OnnxClassifier, cpu_flags  # noqa: E402


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


def measure(
    bundle: Path, name: str, texts: list[str], rows: int, threads: int
) -> tuple[dict[str, Any], np.ndarray]:
    classifier = OnnxClassifier(bundle, threads=threads, model=name)
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
    labels = classifier.logits(texts, batch_size=32).argmax(1)
    return {
        "model": name,
        "file": classifier.model_file,
        "mb": (bundle / classifier.model_file).stat().st_size / 2**20,
        "batch1_p50_ms": float(np.percentile(timings, 50) * 1000),
        "batch1_p95_ms": float(np.percentile(timings, 95) * 1000),
        "batch1_texts_per_s": len(timings) / sum(timings),
        "batch32_texts_per_s": len(batch) / batch32_s,
    }, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models/export")
    parser.add_argument("--texts", type=Path, default=REPO / "data/prepared/test.parquet")
    parser.add_argument("--rows", type=int, default=200, help="texts timed per batch size")
    parser.add_argument("--quantize-missing", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/int8_variants.json")
    args = parser.parse_args(argv)
    threads = os.cpu_count() or 1
    texts = pd.read_parquet(args.texts)["text"].astype(str).tolist()
    with tempfile.TemporaryDirectory(prefix="int8-variants-") as scratch:
        bundle, built = args.bundle, []
        if args.quantize_missing:
            bundle = Path(scratch) / "bundle"
            shutil.copytree(args.bundle, bundle)
            built = add_missing_variants(bundle)
        meta = json.loads((bundle / "bundle.json").read_text())
        names = [
            n for n in ("fp32", "int8", "int8_s8") if (meta["models"].get(n) or {}).get("file")
        ]
        names = ["fp32", *[n for n in names if n != "fp32"]]
        results, labels = [], {}
        for name in names:
            figures, labels[name] = measure(bundle, name, texts, args.rows, threads)
            results.append(figures)
        for figures in results:
            fp32 = results[0]
            figures["batch1_vs_fp32"] = figures["batch1_texts_per_s"] / fp32["batch1_texts_per_s"]
            figures["batch32_vs_fp32"] = (
                figures["batch32_texts_per_s"] / fp32["batch32_texts_per_s"]
            )
            figures["label_agreement_with_fp32"] = float(
                (labels[figures["model"]] == labels["fp32"]).mean()
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
    print("model     MB    b1 p50 ms  b1 texts/s  b32 texts/s  b1 vs fp32  b32 vs fp32  agree")
    for r in results:
        print(
            f"{r['model']:8} {r['mb']:5.1f} {r['batch1_p50_ms']:10.2f} "
            f"{r['batch1_texts_per_s']:11.1f} {r['batch32_texts_per_s']:12.1f} "
            f"{r['batch1_vs_fp32']:10.2f}x {r['batch32_vs_fp32']:11.2f}x "
            f"{r['label_agreement_with_fp32']:6.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
