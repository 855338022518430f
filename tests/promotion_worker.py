"""One "flow finishing": gate + register a bundle against a tracking server.

Run as a separate process by tests/test_promotion.py, so that two of them race for real.
Waits for a start file first, so both reach the registry at the same moment.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tuneops import quiet

quiet.apply()

from pipeline import tasks  # noqa: E402
from pipeline.register import RegisterInputs, gate_and_register  # noqa: E402
from tuneops.config import GateConfig  # noqa: E402
from tuneops.tracking import MlflowTracker  # noqa: E402


def main(tracking_uri: str, artifacts: str, export_dir: str, prepared: str, reports: str) -> None:
    cfg = GateConfig(floors={}, beat_baselines=False, per_class=False, bootstrap_resamples=200)
    tracker = MlflowTracker.start(tracking_uri, "concurrency", artifacts, "race", {})
    go = Path(reports).parent / "go"
    while not go.exists():
        time.sleep(0.05)
    inputs = RegisterInputs(
        tasks.get("text-classification"),
        cfg,
        tracking_uri,
        "race-model",
        Path(prepared),
        Path(reports),
    )
    verdict, result = gate_and_register(
        inputs, tracker, Path(export_dir), {"worker": Path(reports).name}
    )
    print(json.dumps({"version": result.version, "passed": verdict.passed}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
