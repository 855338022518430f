"""Claims the README and pyproject make about the repository, checked against the files
they describe, so that they cannot go stale silently (audit D1, T12)."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
import yaml

from tests.conftest import REPO


def _make_run_output() -> str:
    """The README's `make run` output: the first fenced block after the two commands."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("ended with (paths")
    return readme[start:].split("```")[1]


def _figures(output: str, row: str) -> tuple[float, float]:
    found = re.search(rf"^\s*{re.escape(row)}\s+([0-9.]+)\s+([0-9.]+)\s*$", output, re.M)
    assert found, f"README's make-run output has no {row!r} row"
    return float(found[1]), float(found[2])


@pytest.mark.audit("D1")
def test_the_readme_make_run_output_is_the_committed_default_run_s() -> None:
    """Its data version is data/raw.dvc's and its metric rows are reports/metrics.json's,
    which tests/test_committed_artifacts.py checks are a fresh clone's default run: a
    README left at an older run's figures fails here."""
    output = _make_run_output()
    md5 = yaml.safe_load((REPO / "data" / "raw.dvc").read_text())["outs"][0]["md5"]
    assert re.search(rf"^data version\s+{md5.removesuffix('.dir')}\s*$", output, re.M), output
    metrics = json.loads((REPO / "reports" / "metrics.json").read_text())
    assert re.search(rf"^rows\s.*test {metrics['test_rows']}\s*$", output, re.M), output
    rows = {
        "fine-tuned": metrics,
        "majority class": metrics["majority"],
        "TF-IDF + logistic regression": metrics["tfidf"],
        "before fine-tuning, pooler features": metrics["before_finetuning_pooler"],
    }
    for row, scored in rows.items():
        want = (round(scored["test_accuracy"], 4), round(scored["test_macro_f1"], 4))
        assert _figures(output, row) == pytest.approx(want, abs=1e-9), row


@pytest.mark.audit("T12")
def test_pytest_does_not_hide_deprecation_or_future_warnings() -> None:
    """A blanket ignore hid the TorchScript exporter's deprecation (audit T12): each ignore
    must name its message, so that a new deprecation shows in the test summary."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    filters = config["tool"]["pytest"]["ini_options"].get("filterwarnings", [])
    blanket = [f for f in filters if re.fullmatch(r"ignore:*(:[\w.]*Warning)?:*", f.strip())]
    blanket += [f for f in filters if f.strip().startswith("ignore::")]
    assert blanket == [], f"pyproject.toml filterwarnings ignores whole categories: {blanket}"
