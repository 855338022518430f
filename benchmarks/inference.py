"""Inference speed: PyTorch eager (transformers) vs onnxruntime fp32 vs int8, and the server.

On the candidate and bundle of the last `tuneops run` (models/candidate, models/export) and
the real test texts (data/prepared/test.parquet):
  - latency p50/p95 at batch 1 and throughput at batch 1 and 32, tokenisation included
    (what a caller sees), same threads for every engine;
  - peak resident memory of a fresh process that loads the engine and runs that workload;
  - model file size, and test macro-F1 of each engine on the whole test split;
  - `tuneops serve` under a bounded loopback load (a fixed number of one-text requests from
    a fixed number of concurrent clients): requests/s and p50/p95, micro-batching on and off.
Speeds are ratios to PyTorch eager measured in the same run (server: to batching off),
because absolute times on shared machines drift.

    python benchmarks/inference.py [--bundle models/export] [--candidate models/candidate]
                                   [--requests 400] [--clients 8] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("pytorch", "onnx-fp32", "onnx-int8")


def measure(
    engine: str,
    bundle: Path,
    candidate: Path,
    texts: list[str],
    labels: np.ndarray,
    latency_n: int,
    throughput_n: int,
) -> dict[str, Any]:
    """Runs in its own process so that its peak memory is the engine's alone."""
    predict_ids, model_bytes = _engine(engine, bundle, candidate)
    for text in texts[:10]:
        predict_ids([text])  # warm-up
    timings = []
    for text in texts[:latency_n]:
        started = time.perf_counter()
        predict_ids([text])
        timings.append(time.perf_counter() - started)
    batch = texts[:throughput_n]
    started = time.perf_counter()
    for i in range(0, len(batch), 32):
        predict_ids(batch[i : i + 32])
    batch32_s = time.perf_counter() - started
    predicted = np.concatenate([predict_ids(texts[i : i + 32]) for i in range(0, len(texts), 32)])
    from sklearn.metrics import f1_score

    return {
        "engine": engine,
        "p50_ms": float(np.percentile(timings, 50) * 1000),
        "p95_ms": float(np.percentile(timings, 95) * 1000),
        "batch1_texts_per_s": len(timings) / sum(timings),
        "batch32_texts_per_s": len(batch) / batch32_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model_mb": model_bytes / 2**20,
        "test_macro_f1": float(f1_score(labels, predicted, average="macro")),
    }


def _engine(engine: str, bundle: Path, candidate: Path) -> tuple[Any, int]:
    threads = os.cpu_count() or 1
    if engine == "pytorch":
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.set_num_threads(threads)
        model = AutoModelForSequenceClassification.from_pretrained(candidate).eval()
        tokenizer = AutoTokenizer.from_pretrained(candidate)
        max_length = json.loads((bundle / "bundle.json").read_text())["max_length"]

        @torch.inference_mode()
        def predict_ids(batch: list[str]) -> np.ndarray:
            inputs = tokenizer(
                batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            return model(**inputs).logits.argmax(-1).numpy()

        return predict_ids, (candidate / "model.safetensors").stat().st_size

    from tuneops.runtime import OnnxClassifier

    classifier = OnnxClassifier(bundle, threads=threads, model=engine.removeprefix("onnx-"))
    size = (bundle / classifier.model_file).stat().st_size
    return (lambda batch: classifier.logits(batch, batch_size=32).argmax(-1)), size


def serve_load(
    bundle: Path, texts: list[str], requests: int, clients: int, batch_wait_ms: float
) -> dict[str, Any]:
    """`tuneops serve` on a free loopback port; `requests` one-text POSTs from `clients` threads."""
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuneops.cli",
            "serve",
            "--bundle",
            str(bundle),
            "--port",
            str(port),
            "--batch-wait-ms",
            str(batch_wait_ms),
            "--max-batch",
            "32",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(f"{url}/health", server)
        with httpx.Client(timeout=60) as client:

            def ask(i: int) -> float:
                started = time.perf_counter()
                response = client.post(f"{url}/predict", json={"texts": [texts[i % len(texts)]]})
                response.raise_for_status()
                return time.perf_counter() - started

            for i in range(20):
                ask(i)  # warm-up
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                latencies = list(pool.map(ask, range(requests)))
            wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "server": f"batch wait {batch_wait_ms:g} ms",
        "requests": requests,
        "clients": clients,
        "requests_per_s": requests / wall,
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p95_ms": float(np.percentile(latencies, 95) * 1000),
    }


def _wait_for(url: str, server: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            if server.poll() is not None:
                raise RuntimeError(f"tuneops serve exited with {server.returncode}") from None
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models/export")
    parser.add_argument("--candidate", type=Path, default=REPO / "models/candidate")
    parser.add_argument("--test", type=Path, default=REPO / "data/prepared/test.parquet")
    parser.add_argument("--latency-n", type=int, default=300)
    parser.add_argument("--throughput-n", type=int, default=512)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for path in (args.bundle / "bundle.json", args.candidate / "model.safetensors", args.test):
        if not path.exists():
            sys.exit(f"{path} is missing: run `tuneops run` (or `make run`) first")
    test = pd.read_parquet(args.test)
    texts, labels = test["text"].tolist(), test["label_id"].to_numpy()

    if args.worker:
        result = measure(
            args.worker,
            args.bundle,
            args.candidate,
            texts,
            labels,
            args.latency_n,
            args.throughput_n,
        )
        print(json.dumps(result))
        return

    engines = []
    for engine in ENGINES:
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                engine,
                "--bundle",
                str(args.bundle),
                "--candidate",
                str(args.candidate),
                "--test",
                str(args.test),
                "--latency-n",
                str(args.latency_n),
                "--throughput-n",
                str(args.throughput_n),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        engines.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = engines[0]
    for row in engines:
        row["batch1_speedup"] = row["batch1_texts_per_s"] / base["batch1_texts_per_s"]
        row["batch32_speedup"] = row["batch32_texts_per_s"] / base["batch32_texts_per_s"]
        row["macro_f1_vs_pytorch"] = row["test_macro_f1"] - base["test_macro_f1"]
    servers = [
        serve_load(args.bundle, texts, args.requests, args.clients, wait) for wait in (0.0, 2.0)
    ]
    for row in servers:
        row["speedup"] = row["requests_per_s"] / servers[0]["requests_per_s"]

    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "bundle": json.loads((args.bundle / "bundle.json").read_text()).get("mlflow_run_id"),
        "test_examples": len(texts),
        "engines": engines,
        "server": servers,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inference.json").write_text(json.dumps(report, indent=2) + "\n")
    print(_table(report))


def _table(report: dict[str, Any]) -> str:
    head = (
        "| engine | p50 ms | p95 ms | batch 1 texts/s | vs PyTorch | batch 32 texts/s | "
        "vs PyTorch | peak RSS MB | model MB | test macro-F1 |\n" + "|---" * 10 + "|\n"
    )
    rows = "".join(
        f"| {r['engine']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['batch1_texts_per_s']:.1f}"
        f" | {r['batch1_speedup']:.2f}x | {r['batch32_texts_per_s']:.1f} | "
        f"{r['batch32_speedup']:.2f}x | {r['peak_rss_mb']:.0f} | {r['model_mb']:.1f} | "
        f"{r['test_macro_f1']:.4f} ({r['macro_f1_vs_pytorch']:+.4f}) |\n"
        for r in report["engines"]
    )
    server_head = (
        "\n| tuneops serve | requests | clients | requests/s | vs batching off | "
        "p50 ms | p95 ms |\n" + "|---" * 7 + "|\n"
    )
    server_rows = "".join(
        f"| {r['server']} | {r['requests']} | {r['clients']} | {r['requests_per_s']:.1f} | "
        f"{r['speedup']:.2f}x | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |\n"
        for r in report["server"]
    )
    return head + rows + server_head + server_rows


if __name__ == "__main__":
    main()
