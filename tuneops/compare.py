"""`tuneops compare`: two registered versions side by side, from the registry alone.

Metrics and params come from each version's MLflow run (test metrics, the baselines'
macro-F1, each bundled model file's calibration, export.<model>_test_ece etc., and the
behavioural checks' pass rates, behaviour.<check>_pass_rate),
per-class figures from the run's reports/classification_report.json artifact, data
versions from the lineage tags.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from tuneops.errors import ConfigError

TAGS_SHOWN = (
    "data.version",
    "data.fingerprint",
    "git.commit",
    "params.hash",
    "base_model",
    "strategy",
    "gate.verdict",
    "gate.failed_checks",
)
# The export stage's calibration metrics (tuneops.stages.CALIBRATION_METRICS), per model file.
CALIBRATION = re.compile(
    r"export\.\w+?_(calibration_temperature|calibration_fitted_temperature|validation_ece"
    r"|validation_ece_fitted|test_ece|test_ece_calibrated|test_brier|test_brier_calibrated)"
)


def resolve(client: Any, model_name: str, ref: str) -> Any:
    """A version by number or by alias (champion, challenger, previous)."""
    from mlflow.exceptions import MlflowException

    try:
        if ref.isdigit():
            return client.get_model_version(model_name, ref)
        return client.get_model_version_by_alias(model_name, ref)
    except MlflowException as exc:
        raise ConfigError(f"{model_name}: no version or alias {ref!r}") from exc


def _per_class(tracking_uri: str, run_id: str) -> dict[str, Any]:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path="reports/classification_report.json",
            tracking_uri=tracking_uri,
        )
    except (MlflowException, OSError):
        return {}
    with open(path, encoding="utf-8") as handle:
        return dict(json.load(handle))


def compare(tracking_uri: str, model_name: str, a: str = "champion", b: str = "challenger") -> str:
    """A plain-text table: tags, test metrics, per-class F1 and the params that differ."""
    from tuneops.tracking import store_client

    client = store_client(tracking_uri)
    versions = [resolve(client, model_name, ref) for ref in (a, b)]
    if (a, b) == ("champion", "challenger") and versions[0].version == versions[1].version:
        # Right after a promotion both aliases name one version: show what it replaced.
        with contextlib.suppress(ConfigError):  # a first version has no previous
            versions[1] = resolve(client, model_name, "previous")
    runs = [client.get_run(v.run_id) for v in versions]
    head = [f"v{v.version} ({', '.join(v.aliases) or 'no alias'})" for v in versions]
    lines = [f"{'':34} {head[0]:>24} {head[1]:>24}"]

    def row(name: str, left: Any, right: Any) -> None:
        mark = "" if left == right else "  *"
        lines.append(f"{name:34} {_fmt(left):>24} {_fmt(right):>24}{mark}")

    for tag in TAGS_SHOWN:
        row(tag, *(v.tags.get(tag, "-") for v in versions))
    metric_names = sorted(
        {
            k
            for r in runs
            for k in r.data.metrics
            if k.startswith(
                ("test_", "tfidf.test_macro_f1", "before_finetuning.test_macro_f1", "behaviour.")
            )
            or CALIBRATION.fullmatch(k)
        }
    )
    for name in metric_names:
        row(name, *(r.data.metrics.get(name, "-") for r in runs))
    reports = [_per_class(tracking_uri, r.info.run_id) for r in runs]
    labels = sorted(
        {k for rep in reports for k, v in rep.items() if isinstance(v, dict) and "avg" not in k}
    )
    for label in labels:
        row(f"f1-score[{label}]", *(rep.get(label, {}).get("f1-score", "-") for rep in reports))
    params = [r.data.params for r in runs]
    differing = sorted(
        k for k in set(params[0]) | set(params[1]) if params[0].get(k) != params[1].get(k)
    )
    lines.append(f"params that differ: {len(differing)}")
    for name in differing:
        row(f"  {name}", params[0].get(name, "-"), params[1].get(name, "-"))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) >= 1 else f"{value:.4f}"
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "…"
