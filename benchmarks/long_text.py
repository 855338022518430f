"""train.long_text policies compared on one long-document dataset, same slice, seed, window.

Validates and prepares one slice of a CSV the user brings (its own column names), then
trains each policy in its own process with the packaged default model and scores it on
the whole test split the way the evaluate step does (the candidate's own window and
policy), beside TF-IDF + logistic regression on the same rows. Prints one table: test
macro-F1, accuracy, optimiser steps, training rows (windows, for chunks) and wall time.

    python benchmarks/long_text.py --csv bbc_news.csv --text-column article \
        --label-column topic --rows 1000 --max-length 128 --epochs 1

The CSV is not part of this repository (see README, "Bring your own data").
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
POLICIES = ("truncate", "head_tail", "chunks")


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data.source": "files",
        "data.name": "long_documents",
        "data.text_column": args.text_column,
        "data.label_column": args.label_column,
        "data.max_rows": args.rows,
        "data.hold_back_rows": 0,
        "train.epochs": args.epochs,
        "train.max_length": args.max_length,
        "train.batch_size": args.batch_size,
        "train.max_chunks": args.max_chunks,
    }


def prepare_slice(work: Path, csv: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    from pipeline import tasks
    from pipeline.prepare import prepare
    from pipeline.validate import validate

    params = load_params(work / "params.yaml", overrides)
    paths = Paths(work)
    dataset = paths.raw_dataset(params.data.name)
    dataset.mkdir(parents=True)
    shutil.copy(csv, dataset / csv.name)
    task = tasks.get(params.task)
    checked = validate(task, params.data, params.validate_, dataset, paths.reports)
    checked.raise_for_failures()
    prepare(task, params.data, params.prepare, checked.labels, dataset, paths.data_prepared)
    return dict(json.loads((paths.data_prepared / "manifest.json").read_text(encoding="utf-8")))


def run_one(work: Path, policy: str, overrides: dict[str, Any], out: Path) -> None:
    """Train one policy and score it on the test split (its own process); row to `out`."""
    import pandas as pd

    from pipeline import tasks
    from pipeline.tasks.text_classification import candidate_window, score
    from pipeline.train import train
    from pipeline.training.modeling import load_tokenizer, predict_logits

    params = load_params(work / "params.yaml", overrides | {"train.long_text": policy})
    paths = Paths(work)
    task = tasks.get(params.task)
    started = time.perf_counter()
    result = train(
        task,
        params.model,
        params.train,
        paths.data_prepared,
        paths.candidate,
        paths.checkpoints,
        paths.data_cache,
    )
    trained_s = time.perf_counter() - started
    test = pd.read_parquet(paths.data_prepared / "test.parquet")
    model, tokenizer = task.load_model(paths.candidate), load_tokenizer(paths.candidate)
    window = candidate_window(paths.candidate, tokenizer, 0)  # the evaluate step's reading
    logits = predict_logits(
        model, tokenizer, test["text"].tolist(), window, params.evaluate.batch_size
    )
    labels = json.loads((paths.candidate / "labels.json").read_text(encoding="utf-8"))
    scores = score(test["label_id"].to_numpy(), logits.argmax(axis=1), len(labels))
    summary = json.loads((paths.candidate / "training_summary.json").read_text("utf-8"))
    row = {
        "long_text": policy,
        "test_macro_f1": scores["test_macro_f1"],
        "test_accuracy": scores["test_accuracy"],
        "best_validation_macro_f1": result.best_validation.get("macro_f1"),
        "global_steps": result.global_steps,
        "train_tokens": result.train_tokens,
        "tokens_per_s": result.tokens_per_s,
        "train_s": round(trained_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "windows": summary.get("windows"),
        "device": result.device,
    }
    out.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")


def tfidf_f1(work: Path, seed: int) -> float:
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from pipeline.tasks.text_classification import score

    train = pd.read_parquet(work / "data/prepared/train.parquet")
    test = pd.read_parquet(work / "data/prepared/test.parquet")
    model = make_pipeline(  # the evaluate step's TF-IDF baseline
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
        LogisticRegression(max_iter=2000, C=4.0, random_state=seed),
    ).fit(train["text"], train["label_id"])
    n_labels = int(max(train["label_id"].max(), test["label_id"].max())) + 1
    return score(test["label_id"].to_numpy(), model.predict(test["text"]), n_labels)[
        "test_macro_f1"
    ]


def table(rows: dict[str, dict[str, Any]], tfidf: float) -> str:
    lines = [
        "| train.long_text | test macro-F1 | accuracy | steps | train rows | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        windows = (r.get("windows") or {}).get("train", {}).get("windows", "")
        lines.append(
            f"| {name} | {r['test_macro_f1']:.4f} | {r['test_accuracy']:.4f} | "
            f"{r['global_steps']} | {windows} | {r['wall_s']:.0f} |"
        )
    lines.append(f"| (TF-IDF + logistic regression) | {tfidf:.4f} | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--rows", type=int, default=1000, help="raw rows in the slice")
    parser.add_argument("--max-length", type=int, default=128, help="train.max_length")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32, help="train.batch_size")
    parser.add_argument("--max-chunks", type=int, default=8, help="train.max_chunks")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--only", choices=POLICIES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = overrides_of(args)

    if args.only:  # the per-policy worker process
        run_one(args.work, args.only, overrides, args.work / f"{args.only}.json")
        return

    work = Path(tempfile.mkdtemp(prefix="tuneops-long-text-"))
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    manifest = prepare_slice(work, args.csv.resolve(), overrides)
    rows: dict[str, dict[str, Any]] = {}
    forwarded = [
        f"--{k}={v}"
        for k, v in (
            ("csv", args.csv),
            ("text-column", args.text_column),
            ("label-column", args.label_column),
            ("rows", args.rows),
            ("max-length", args.max_length),
            ("epochs", args.epochs),
            ("batch-size", args.batch_size),
            ("max-chunks", args.max_chunks),
        )
    ]
    for policy in args.policies.split(","):
        print(f"training long_text={policy} …", flush=True)
        command = [sys.executable, __file__, "--only", policy, "--work", str(work), *forwarded]
        subprocess.run(command, check=True)
        rows[policy] = json.loads((work / f"{policy}.json").read_text(encoding="utf-8"))
        print(json.dumps(rows[policy]), flush=True)
    params = load_params(work / "params.yaml", overrides)
    tfidf = tfidf_f1(work, params.train.seed)
    result = {
        "benchmark": "long_text",
        "command": "python benchmarks/long_text.py " + " ".join(forwarded),
        "machine": machine(),
        "model": params.model.name_or_path,
        "rows": manifest.get("rows"),
        "epochs": args.epochs,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "max_chunks": args.max_chunks,
        "seed": params.train.seed,
        "tfidf_test_macro_f1": tfidf,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "long_text.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    cpu = result["machine"]
    print(
        f"\n{params.model.name_or_path}, rows {result['rows']}, {args.epochs:g} epoch(s), "
        f"max_length {args.max_length}; {cpu['cpu']} ({' '.join(cpu['flags'])}), "
        f"{cpu['cores']} cores\n"
    )
    print(table(rows, tfidf))
    print(f"\nwrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
