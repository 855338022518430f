"""gate: decide, check by check, whether a challenger may replace the champion.

Pure: it takes the numbers (GateInputs: the shipped model file's metrics, the champion,
best-champion and baseline comparisons, latency) and returns a verdict. ONNX parity is not a gate
check: the export step raises ExportParityError before a bundle exists, so in the flow
it could not fail.
Re-scoring the champion, reading the baselines' per-row predictions and moving aliases
happen in `pipeline.register`; every comparison's paired bootstrap is `pipeline.bootstrap`.

The champion comparison is a non-inferiority test: a challenger may lose up to
gate.champion_tolerance against the champion. Against the current champion alone that
ratchets (each promotion may lose another tolerance), so the challenger is also compared,
by the same rule, with the anchor: the registry alias `best` (pipeline.registry.BEST), the
champion with the best primary-metric point estimate so far. `best_after` says where that
alias goes when a challenger is promoted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.behaviour import CheckResult
from tuneops.config import GateConfig
from tuneops.errors import ConfigError
from tuneops.paths import atomic_write_text


@dataclass
class GateCheck:
    name: str
    passed: bool
    value: Any
    threshold: Any
    detail: str = ""


@dataclass
class ChampionComparison:
    """The champion re-scored on the challenger's test split, and the paired bootstrap."""

    champion_version: str
    champion_metrics: dict[str, float]
    observed_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int
    metric: str = "test_macro_f1"
    rows: int = 0  # the test rows both were scored on
    # What was left out of the current test split, and why (its own train rows), or "".
    note: str = ""
    # Its pass rate per behavioural check (pipeline.behaviour), on the challenger's cases.
    behaviour: dict[str, float] = field(default_factory=dict)
    # The same comparison on each other metric the task judges (Task.judged_metrics:
    # intent-and-slots' intent accuracy beside slot F1); [] for one judged metric.
    others: list[ChampionComparison] = field(default_factory=list)


@dataclass
class BaselineComparison:
    """The shipped model vs one baseline on the same test rows: the paired bootstrap of
    (model - baseline) on the primary metric, each model's own figure beside it."""

    baseline: str
    model_score: float
    baseline_score: float
    observed_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int
    metric: str = ""  # "" for the primary metric
    # The same comparison on each other judged metric (as ChampionComparison.others).
    others: list[BaselineComparison] = field(default_factory=list)


@dataclass
class GateVerdict:
    passed: bool
    checks: list[GateCheck]
    challenger_version: str | None = None
    champion_version: str | None = None
    comparison: ChampionComparison | None = None
    # The anchor (alias `best`) when it was compared on its own: another version than the
    # champion and the challenger.
    best_version: str | None = None
    best_comparison: ChampionComparison | None = None
    # What a reader of a passed verdict must also know: rows left out of the champion's
    # score, an interval too wide for gate.champion_tolerance.
    notes: list[str] = field(default_factory=list)
    # The behavioural checks' results (gate.behaviour_checks), with their failing cases.
    behaviour: list[CheckResult] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    def summary(self) -> str:
        """One line: the verdict and, for a rejection, each failed check with its numbers."""
        against = f" vs champion v{self.champion_version}" if self.champion_version else ""
        if self.best_version:
            against += f" and best champion v{self.best_version}"
        who = f"challenger v{self.challenger_version}" if self.challenger_version else "candidate"
        if self.passed:
            said = "".join(f"; {note}" for note in self.notes)
            # A champion comparison that ran is shown with its figures: its interval is
            # what a pass over a champion rests on.
            compared = "".join(
                f"; {c.detail}"
                for c in self.checks
                if c.name in (CHAMPION_CHECK, BEST_CHECK) and c.value is not None
            )
            return f"gate passed: {who}{against}, {len(self.checks)} checks{compared}{said}"
        failures = "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.passed)
        return f"gate rejected {who}{against}: {failures}"


@dataclass
class GateInputs:
    """Everything the gate judges: one model's figures on the current test split."""

    # The shipped file's (bundle.json's default model) test_* re-scored on the current
    # test split.
    metrics: dict[str, Any]
    per_class: dict[str, dict[str, float]]  # the shipped file's, on the same split
    labels: list[str]  # the classes (entity types) the per-class floor judges
    primary_metric: str  # the task's: test_macro_f1, test_entity_f1
    primary_metric_label: str  # its name for people: macro-F1, entity-F1
    # None when there is no champion yet (the check passes, "no champion") or when the
    # champion cannot be compared (`not_comparable` says why; the check fails).
    comparison: ChampionComparison | None = None
    not_comparable: str | None = None
    champion: str | None = None
    # The same for the best champion so far (alias `best`), given only when it is another
    # version than the champion and the challenger; None and None: no separate anchor.
    best: ChampionComparison | None = None
    best_not_comparable: str | None = None
    best_champion: str | None = None
    latency_p95_ms: float | None = None
    # One per gate.baselines entry: the bootstrap against the baseline's per-row test
    # predictions (reports/test_predictions.parquet), or why it could not be compared.
    baselines: dict[str, BaselineComparison | str] = field(default_factory=dict)
    # bundle.json's calibration entry of the shipped model file (pipeline.calibration:
    # temperature, test_ece, test_ece_calibrated, ...), None where it records none.
    calibration: dict[str, Any] | None = None
    # The shipped file's behavioural check results (pipeline.behaviour); None: no checks.
    behaviour: list[CheckResult] | None = None
    # Metrics (names without test_) where lower is better (the task's: MAE for text
    # regression): their floors are ceilings, and with the primary metric among them a
    # baseline's error is its score. Every diff is an improvement (> 0: better) either way.
    lower_is_better: tuple[str, ...] = ()

    @property
    def primary_lower_is_better(self) -> bool:
        return lower_is_better(self.primary_metric, self.lower_is_better)


def lower_is_better(metric: str, names: tuple[str, ...]) -> bool:
    """Whether `metric` (test_mae, mae, eval_mae) is one of `names` (mae, rmse)."""
    return metric.removeprefix("test_").removeprefix("eval_") in names


def gate(cfg: GateConfig, inputs: GateInputs) -> GateVerdict:
    """Run every enabled check."""
    checks = [*_floors(cfg, inputs.metrics, inputs.lower_is_better)]
    if cfg.beat_baselines:
        checks += _baselines(cfg, inputs)
    if cfg.vs_champion:
        checks.append(_champion(cfg, inputs))
        checks += _other_metrics(cfg, CHAMPION_CHECK, "champion", inputs.comparison)
        if inputs.best is not None or inputs.best_not_comparable is not None:
            checks.append(_best(cfg, inputs))
            checks += _other_metrics(cfg, BEST_CHECK, "best champion", inputs.best)
    if cfg.per_class:
        checks.append(per_class_check(cfg, inputs.per_class, inputs.labels))
    if inputs.calibration is not None or cfg.max_ece is not None:
        checks.append(ece_check(cfg, inputs.calibration))
    if cfg.latency:
        latency = inputs.latency_p95_ms
        checks.append(
            GateCheck(
                "latency_p95_ms",
                latency is not None and latency <= cfg.latency_p95_ms,
                None if latency is None else round(latency, 3),
                cfg.latency_p95_ms,
                f"p95 {latency:.1f} ms vs budget {cfg.latency_p95_ms} ms"
                if latency is not None
                else "not measured",
            )
        )
    if inputs.behaviour is not None:
        checks += behaviour_checks(inputs.behaviour, inputs.comparison)
    comparison = inputs.comparison
    notes: list[str] = []
    best, best_version = None, None
    if cfg.vs_champion:
        best = inputs.best
        if best is not None or inputs.best_not_comparable is not None:
            best_version = best.champion_version if best else inputs.best_champion
        for c in (comparison, best):
            if c is not None:
                notes += [n for n in (c.note, champion_interval_warning(cfg, c)) if n]
    return GateVerdict(
        passed=all(c.passed for c in checks),
        checks=checks,
        champion_version=comparison.champion_version if comparison else inputs.champion,
        comparison=comparison,
        best_version=best_version,
        best_comparison=best,
        notes=notes,
        behaviour=list(inputs.behaviour or []),
    )


def best_after(verdict: GateVerdict, best: str | None) -> str | None:
    """Where alias `best` goes once the passed verdict's challenger is the champion: to the
    challenger when its paired point estimate against the anchor is > 0, or when there is
    no anchor at all (the first champion); else to the anchor. The anchor is `best`, or,
    where it is unset (a registry from before it) or is the champion, the champion itself.
    None: leave `best` as it is (nothing was compared: the challenger was the champion)."""
    challenger = verdict.challenger_version
    if best is not None and best == challenger:
        return best
    anchor = verdict.best_comparison or verdict.comparison
    if anchor is None:
        return challenger if verdict.champion_version is None else None
    return challenger if anchor.observed_diff > 0 else anchor.champion_version


def _floors(
    cfg: GateConfig, metrics: dict[str, Any], lower: tuple[str, ...] = ()
) -> list[GateCheck]:
    """Each gate.floors entry: value >= floor, or value <= it for a metric in `lower`
    (lower is better: the "floor" is a ceiling, test_mae: 1.0 asks MAE <= 1.0)."""
    checks = []
    for name, bound in cfg.floors.items():
        if name not in metrics or isinstance(metrics[name], dict):
            known = sorted(k for k, v in metrics.items() if isinstance(v, float))
            raise ConfigError(f"gate.floors: unknown metric {name!r}; expected one of {known}")
        value = float(metrics[name])
        ceiling = lower_is_better(name, lower)
        checks.append(
            GateCheck(
                f"floor:{name}",
                value <= bound if ceiling else value >= bound,
                round(value, 4),
                bound,
                f"{value:.4f} vs {'ceiling (lower is better)' if ceiling else 'floor'} {bound}",
            )
        )
    return checks


ECE_CHECK = "max_ece"


def ece_check(cfg: GateConfig, calibration: dict[str, Any] | None) -> GateCheck:
    """The shipped file's calibrated test ECE (bundle.json, measured by export on the test
    split it exported with) against gate.max_ece; with max_ece null it is reported and
    always passes."""
    if calibration is None:
        return GateCheck(
            ECE_CHECK,
            False,
            None,
            cfg.max_ece,
            "bundle.json records no calibration for the shipped model file (exported before "
            "calibration, or a task without calibrated scores): export it again, or set "
            "gate.max_ece to null",
        )
    ece = float(calibration["test_ece_calibrated"])
    figures = (
        f"calibrated test ECE {ece:.4f} (T {calibration['temperature']:.3f}; "
        f"{float(calibration['test_ece']):.4f} before; {calibration['ece_bins']} equal-mass "
        "bins, export's test split)"
    )
    if cfg.max_ece is None:
        return GateCheck(
            ECE_CHECK, True, round(ece, 4), None, f"{figures}; not judged: gate.max_ece is null"
        )
    passed = ece <= cfg.max_ece
    return GateCheck(
        ECE_CHECK,
        passed,
        round(ece, 4),
        cfg.max_ece,
        f"{figures} {'within' if passed else 'above'} gate.max_ece {cfg.max_ece}",
    )


BEHAVIOUR_CHECK = "behaviour:"  # + the check's name


def behaviour_checks(
    results: list[CheckResult], champion: ChampionComparison | None
) -> list[GateCheck]:
    """One gate check per behavioural check: its pass rate >= its floor (the file's), the
    champion's rate on the same cases beside it, and on a failure a few failing cases and
    the key that sets the floor."""
    checks = []
    for r in results:
        passed = r.pass_rate >= r.floor
        detail = (
            f"{r.type}{f' ({r.what})' if r.what else ''}: {r.passed} of {r.cases} cases pass "
            f"({r.pass_rate:.4f}) vs floor {r.floor}"
        )
        if champion is not None and r.name in champion.behaviour:
            detail += f"; champion v{champion.champion_version} {champion.behaviour[r.name]:.4f}"
        if not passed:
            shown = "; ".join(_failure(f) for f in r.failures)
            detail += f"; failing: {shown}; the floor is {r.file}: {r.key}"
        checks.append(
            GateCheck(f"{BEHAVIOUR_CHECK}{r.name}", passed, round(r.pass_rate, 4), r.floor, detail)
        )
    return checks


def _failure(f: Any) -> str:
    edit = f" -> {f.edited!r}" if f.edited is not None else ""
    return f"{f.text!r}{edit}: {f.got}, expected {f.expected}"


def baseline_margin(cfg: GateConfig, baseline_score: float, lower: bool = False) -> float:
    """The lower bound a model must clear: `baseline_min_error_reduction` of the baseline's
    headroom (1 - its score), so a 0.97 baseline asks +0.003 and a 0.70 one +0.03; for a
    metric where lower is better (`lower`: MAE) the headroom is the score itself."""
    return cfg.baseline_min_error_reduction * (baseline_score if lower else 1.0 - baseline_score)


def _baselines(cfg: GateConfig, inputs: GateInputs) -> list[GateCheck]:
    checks = []
    for baseline in cfg.baselines:
        if baseline not in inputs.baselines:
            raise ConfigError(
                f"gate.baselines: unknown baseline {baseline!r}; expected one of "
                f"{sorted(inputs.baselines)}"
            )
        found = inputs.baselines[baseline]
        if isinstance(found, str):
            checks.append(GateCheck(f"beats:{baseline}", False, None, None, found))
            continue
        checks.append(
            _baseline_check(cfg, found, inputs.primary_metric_label, inputs.primary_lower_is_better)
        )
        checks += [
            _baseline_check(cfg, other, _metric_label(other.metric), suffix=f":{other.metric}")
            for other in found.others
        ]
    return checks


def _metric_label(metric: str) -> str:
    """A judged metric other than the primary, for people (test_intent_accuracy: intent
    accuracy)."""
    return metric.removeprefix("test_").replace("_", " ")


def _baseline_check(
    cfg: GateConfig, c: BaselineComparison, label: str, lower: bool = False, suffix: str = ""
) -> GateCheck:
    margin = baseline_margin(cfg, c.baseline_score, lower)
    error = c.baseline_score if lower else 1.0 - c.baseline_score
    improvement = f" ({c.baseline} - model: lower is better)" if lower else ""
    return GateCheck(
        f"beats:{c.baseline}{suffix}",
        c.ci_low > margin,
        {
            "diff": round(c.observed_diff, 4),
            "ci_low": round(c.ci_low, 4),
            "ci_high": round(c.ci_high, 4),
        },
        round(margin, 4),
        f"{label} {c.model_score:.4f} vs {c.baseline} {c.baseline_score:.4f}: diff"
        f"{improvement} {c.observed_diff:+.4f}, {c.confidence:.0%} CI [{c.ci_low:+.4f}, "
        f"{c.ci_high:+.4f}], lower bound must be > {margin:+.4f} "
        f"({cfg.baseline_min_error_reduction:.0%} of {c.baseline}'s error {error:.4f})",
    )


CHAMPION_CHECK, BEST_CHECK = "no_regression_vs_champion", "vs_best_champion"


def _champion(cfg: GateConfig, inputs: GateInputs) -> GateCheck:
    if inputs.not_comparable is not None:
        return GateCheck(CHAMPION_CHECK, False, None, None, inputs.not_comparable)
    if inputs.comparison is None:
        return GateCheck(CHAMPION_CHECK, True, None, None, "no champion")
    return _non_inferior(cfg, CHAMPION_CHECK, "champion", inputs.comparison, inputs)


def _best(cfg: GateConfig, inputs: GateInputs) -> GateCheck:
    """The same non-inferiority rule against the anchor, the best champion so far."""
    if inputs.best is None:
        return GateCheck(BEST_CHECK, False, None, None, str(inputs.best_not_comparable))
    return _non_inferior(cfg, BEST_CHECK, "best champion", inputs.best, inputs)


def _other_metrics(
    cfg: GateConfig, name: str, whom: str, c: ChampionComparison | None
) -> list[GateCheck]:
    """The non-inferiority check on each other judged metric (`name:metric`), by the
    same rule and tolerance as on the primary metric."""
    if c is None:
        return []
    return [
        _non_inferior(cfg, f"{name}:{o.metric}", whom, o, None, _metric_label(o.metric))
        for o in c.others
    ]


def _non_inferior(
    cfg: GateConfig,
    name: str,
    whom: str,
    c: ChampionComparison,
    inputs: GateInputs | None,
    label: str = "",
) -> GateCheck:
    notes = [n for n in (c.note, champion_interval_warning(cfg, c)) if n]
    lower = inputs is not None and inputs.primary_lower_is_better
    return GateCheck(
        name,
        c.ci_low >= -cfg.champion_tolerance,
        {
            "diff": round(c.observed_diff, 4),
            "ci_low": round(c.ci_low, 4),
            "ci_high": round(c.ci_high, 4),
        },
        -cfg.champion_tolerance,
        f"{label or (inputs.primary_metric_label if inputs else c.metric)} diff vs {whom} "
        f"v{c.champion_version}"
        f"{f' ({whom} - challenger: lower is better)' if lower else ''} "
        f"{c.observed_diff:+.4f}, "
        f"{c.confidence:.0%} CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}], lower bound must be "
        f">= {-cfg.champion_tolerance}" + "".join(f"; {n}" for n in notes),
    )


def champion_interval_warning(cfg: GateConfig, c: ChampionComparison) -> str:
    """A warning when the interval is too wide for the tolerance ("" otherwise): with a
    half-width above gate.champion_tolerance, a challenger exactly as good as the champion
    has its lower bound below -tolerance about as often as not, so it is rejected by noise."""
    half_width = (c.ci_high - c.ci_low) / 2
    if half_width <= cfg.champion_tolerance:
        return ""
    rows = f" on {c.rows} test rows" if c.rows else ""
    return (
        f"warning: the interval's half-width {half_width:.4f}{rows} exceeds "
        f"gate.champion_tolerance {cfg.champion_tolerance}, so an equally good challenger is "
        "often rejected by noise alone: raise gate.champion_tolerance above the half-width, "
        "or test on more rows (prepare.test_fraction)"
    )


def per_class_check(
    cfg: GateConfig, per_class: dict[str, dict[str, float]], labels: list[str]
) -> GateCheck:
    """Every judged class's `per_class_metric` >= the floor (export's int8 decision too)."""
    judged = [
        label
        for label in labels
        if float(per_class.get(label, {}).get("support", 0)) >= cfg.per_class_min_support
    ]
    skipped = sorted(set(labels) - set(judged))
    values = {label: float(per_class[label][cfg.per_class_metric]) for label in judged}
    low = {
        k: round(v, 4)
        for k, v in values.items()
        if v < cfg.per_class_floor and k not in cfg.per_class_exempt
    }
    note = (
        f"; {len(skipped)} with support < {cfg.per_class_min_support} not judged" if skipped else ""
    )
    exempt = {k: round(values[k], 4) for k in cfg.per_class_exempt if k in values}
    if exempt:  # said in every verdict, so an exemption is never silent
        note += f"; exempt: {exempt} ({'; '.join(cfg.per_class_exempt[k] for k in exempt)})"
    unknown = sorted(set(cfg.per_class_exempt) - set(labels))
    if unknown:  # a misspelt exemption would otherwise look like one that applies
        note += f"; exempt classes not in this model: {unknown}"
    if low:
        detail = f"below {cfg.per_class_floor}: {low}{note}"
    elif values:
        candidates = [k for k in values if k not in cfg.per_class_exempt] or list(values)
        worst = min(candidates, key=lambda label: values[label])
        detail = f"lowest {worst} {values[worst]:.4f} vs floor {cfg.per_class_floor}{note}"
    else:
        detail = f"no class has support >= {cfg.per_class_min_support}"
    return GateCheck(
        f"per_class_{cfg.per_class_metric}",
        not low,
        {k: round(v, 4) for k, v in values.items()},
        cfg.per_class_floor,
        detail,
    )


def write_reports(verdict: GateVerdict, reports_dir: Path) -> tuple[Path, Path]:
    """reports/gate.json (machine) and reports/gate.md (people, Prefect artifact)."""
    payload = asdict(verdict) | {
        "summary": verdict.summary(),
        "failed_checks": verdict.failed_checks,
    }
    json_path, md_path = reports_dir / "gate.json", reports_dir / "gate.md"
    atomic_write_text(json_path, json.dumps(payload, indent=2, default=str) + "\n")
    atomic_write_text(md_path, to_markdown(verdict))
    return json_path, md_path


def to_markdown(verdict: GateVerdict) -> str:
    rows = "\n".join(
        f"| {'pass' if c.passed else '**FAIL**'} | {c.name} | {_cell(c.value)} | "
        f"{_cell(c.threshold)} | {c.detail} |"
        for c in verdict.checks
    )
    return (
        f"## Gate: {'PASSED' if verdict.passed else 'REJECTED'}\n\n"
        f"challenger: {verdict.challenger_version or 'unregistered'}; champion compared: "
        f"{verdict.champion_version or 'none'}"
        + (f"; best champion compared: {verdict.best_version}" if verdict.best_version else "")
        + "\n\n"
        f"| result | check | value | threshold | detail |\n| --- | --- | --- | --- | --- |\n"
        f"{rows}\n\n{verdict.summary()}\n"
        + ("\n" + "".join(f"- {note}\n" for note in verdict.notes) if verdict.notes else "")
        + behaviour_markdown(verdict)
    )


def behaviour_markdown(verdict: GateVerdict) -> str:
    """The behavioural checks' table (pass rate, floor, the champion's rate on the same
    cases) and each check's failing cases shown; "" without checks."""
    if not verdict.behaviour:
        return ""
    champion = verdict.comparison.behaviour if verdict.comparison else {}
    rows = "".join(
        f"| {r.name} | {r.type} | {r.cases} | {r.pass_rate:.4f} | {r.floor} | "
        f"{f'{champion[r.name]:.4f}' if r.name in champion else '—'} | "
        + "<br>".join(
            f"`{_escaped(f.edited if f.edited is not None else f.text)}` → {f.got} "
            f"(expected {f.expected})"
            for f in r.failures
        )
        + " |\n"
        for r in verdict.behaviour
    )
    files = sorted({r.file for r in verdict.behaviour})
    return (
        f"\n## Behavioural checks\n\nfrom {', '.join(files)} (gate.behaviour_checks); champion: "
        f"its pass rate on the same cases\n\n"
        "| check | type | cases | pass rate | floor | champion | failing (a few) |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n" + rows
    )


def _escaped(text: str) -> str:
    """A text in a markdown table cell: a | would end the cell, a ` the code span."""
    return text.replace("|", "\\|").replace("`", "'")


def _cell(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict) else str(value)
