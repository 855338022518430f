"""export: the candidate as an ONNX bundle, checked against PyTorch with onnxruntime.

The bundle (models/export/) needs only onnxruntime + tokenizers + numpy to run:
model.onnx (fp32, graph-optimised), model.int8.onnx (uint8 weights) and model.int8s8.onnx
(int8 weights, for CPUs with VNNI or AMX), each when it keeps its accuracy, tokenizer.json,
labels.json, bundle.json (what it is, where it came from, how it scored), a model card
(README.md) and tuneops_runtime.py, the runtime as one file; for a calibrated classifier
also reliability_diagram.png (the default model's, before and after temperature scaling;
the card shows it), copied to reports/ when a reports folder is given.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import torch
from transformers import PreTrainedModel

from pipeline import behaviour as behavioural
from pipeline import quantize
from pipeline.calibration import ECE_BINS
from pipeline.gate import lower_is_better, per_class_check
from pipeline.plots import write_reliability_diagram
from pipeline.tasks.base import (
    Scores,
    Task,
    TestSplit,
    bundle_meta,
    lower_is_better_metrics,
    onnx_outputs,
    require_candidate_labels,
)
from pipeline.training.modeling import load_tokenizer
from tuneops import runtime
from tuneops.config import ExportConfig, GateConfig
from tuneops.errors import ExportParityError
from tuneops.paths import atomic_dir, atomic_file
from tuneops.runtime import OnnxBundle, load_bundle

FP32_FILE, RUNTIME_FILE = "model.onnx", "tuneops_runtime.py"
RELIABILITY_FILE = "reliability_diagram.png"


@dataclass
class ExportResult:
    export_dir: Path
    onnx_path: Path
    onnx_bytes: int
    opset: int
    parity_examples: int
    parity_max_abs_diff: float
    parity_label_agreement: float
    optimized: bool
    fp32_accuracy: float  # token accuracy for token classification
    fp32_f1: float  # macro-F1, or entity-level micro-F1 for token classification
    int8_kept: bool
    int8_reason: str
    int8_bytes: int | None = None
    int8_accuracy: float | None = None
    int8_f1: float | None = None
    int8_label_agreement: float | None = None
    # Every int8 variant (quantize.VARIANTS' names: int8 with uint8 weights, int8_s8 with
    # int8 weights): kept, reason, and when built bytes, f1, accuracy, label_agreement.
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    # bundle.json's calibration per bundled model file (fp32, and int8 when kept), without
    # the reliability bins; {} for a task without calibrated scores.
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    reliability_diagram: Path | None = None  # reports/reliability_diagram.png when written


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in a fixed order, logits out (the task's outputs, by attribute
    name: "logits", or one per head): the graph ONNX hosts call."""

    def __init__(
        self, model: torch.nn.Module, input_names: list[str], outputs: tuple[str, ...] = ("logits",)
    ) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.outputs = outputs

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        found = self.model(**dict(zip(self.input_names, inputs, strict=True)))
        if self.outputs == ("logits",):
            return found.logits
        return tuple(getattr(found, name) for name in self.outputs)


def _training_summary(candidate_dir: Path) -> dict[str, Any]:
    path = candidate_dir / "training_summary.json"
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else {}


def _window_meta(candidate_dir: Path, tokenizer: Any, max_length: int) -> dict[str, Any]:
    from pipeline.tasks.text_classification import candidate_window

    window = candidate_window(candidate_dir, tokenizer, max_length)
    meta: dict[str, Any] = {"max_length": window.max_length, "long_text": window.long_text}
    if window.long_text == "chunks":
        meta |= {"chunk_stride": window.stride, "max_chunks": window.max_chunks}
    return meta


def export(
    task: Task,
    cfg: ExportConfig,
    max_length: int,
    candidate_dir: Path,
    prepared_dir: Path,
    export_dir: Path,
    card: dict[str, Any] | None = None,
    gate: GateConfig | None = None,
    reports_dir: Path | None = None,
    behaviour: behavioural.Suite | None = None,
    cpu_flags: frozenset[str] | None = None,
) -> ExportResult:
    """Write the bundle atomically; on a parity mismatch raise ExportParityError.

    Each model file is scored on the whole test split (the split the gate uses) and
    bundle.json records its figures and per-class report. int8 becomes the default
    only when it passes `quantize.decide`, with the gate's per-class floor when `gate`
    is given and `gate.per_class` is on. With `reports_dir`, the default model's
    reliability diagram is copied to reports_dir/reliability_diagram.png (and a stale one
    removed when this bundle has none). With `behaviour`, the default model's pass rate per
    behavioural check goes into bundle.json and the model card (the gate judges them again,
    beside the champion's, at registration). `cpu_flags`: the exporting CPU's flags, which
    decide export.int8_reduce_range auto (None: this CPU's, from /proc/cpuinfo)."""
    labels = require_candidate_labels(candidate_dir, prepared_dir)
    # Eager attention exports as plain MatMul/Softmax, which onnxruntime's optimizer
    # fuses into one Attention kernel; the SDPA graph it cannot fuse. Same weights.
    model = task.load_model(candidate_dir, attn_implementation="eager").eval()
    tokenizer = load_tokenizer(candidate_dir)
    input_names = [
        n
        for n in ("input_ids", "attention_mask", "token_type_ids")
        if n in tokenizer.model_input_names
    ]
    test = pd.read_parquet(prepared_dir / "test.parquet")
    flags = runtime.cpu_flags() if cpu_flags is None else cpu_flags

    with atomic_dir(export_dir) as tmp:
        raw = tmp.parent / f".{tmp.name}.raw.onnx"
        try:
            _export_onnx(model, tokenizer, input_names, cfg.opset, raw, onnx_outputs(task))
            optimized = cfg.optimize and _optimize(model.config, raw, tmp / FP32_FILE)
            if not optimized:
                shutil.move(raw, tmp / FP32_FILE)
        finally:
            raw.unlink(missing_ok=True)
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "labels.json").write_text(json.dumps(labels) + "\n", encoding="utf-8")
        shutil.copyfile(runtime.__file__, tmp / RUNTIME_FILE)
        meta = {
            "task": task.name,
            # The candidate's window (train.max_length, auto resolved) and train.long_text:
            # how the runtime reads a longer text (chunks: its stride and window cap).
            **_window_meta(candidate_dir, tokenizer, max_length),
            "input_names": input_names,
            "output_names": list(onnx_outputs(task)),
            "opset": cfg.opset,
            "pad_token": tokenizer.pad_token,
            "pad_token_id": tokenizer.pad_token_id,
            "models": {"fp32": {"file": FP32_FILE, "graph_optimized": optimized}},
            "default_model": "fp32",
            # What scored the int8 variants here (and decides reduce_range auto).
            "export_cpu_flags": sorted(flags & set(quantize.KERNEL_FLAGS)),
            # The task's own keys (text regression: its target's name and scale).
            **bundle_meta(task, candidate_dir, prepared_dir),
        } | (card or {})
        _write_meta(tmp, meta)

        fp32 = load_bundle(tmp, model="fp32")
        parity = _check_parity(cfg, task, model, tokenizer, fp32, test, max_length, export_dir)
        split = task.test_split(prepared_dir, labels)
        fp32_pred = split.rescore(fp32)
        fp32_scores = _scores(task, split, fp32_pred)
        meta["models"]["fp32"] |= {"bytes": (tmp / FP32_FILE).stat().st_size}
        meta["models"]["fp32"] |= fp32_scores.figures | {"per_class": fp32_scores.per_class}
        _calibrate(task, meta["models"]["fp32"], fp32, prepared_dir)
        meta["parity"] = parity
        meta["test_examples"] = len(test)

        scored = (split, fp32_pred, fp32_scores)
        variants = {
            v.name: _int8(cfg, gate, task, tmp, scored, v, flags) for v in quantize.VARIANTS
        }
        for variant in quantize.VARIANTS:
            entry = meta["models"][variant.name] = variants[variant.name][0]
            if entry["kept"]:
                _calibrate(task, entry, load_bundle(tmp, model=variant.file), prepared_dir)
        # The default (what the gate judges, and what a CPU the bundle records no variant
        # for runs) is uint8's int8 when it passed: safe on every CPU; the runtime picks
        # int8_s8 instead on a CPU with VNNI or AMX (tuneops.runtime.choose_model).
        int8, int8_scores = variants["int8"]
        if int8["kept"]:
            meta["default_model"] = "int8"
        _write_meta(tmp, meta)
        if behaviour is not None:
            # on the file the gate judges on every CPU: the default_model just written
            meta["behaviour"] = _behaviour(behaviour, load_bundle(tmp, model="default"), split)
            _write_meta(tmp, meta)
        diagram = _reliability_diagram(meta, tmp)
        result = ExportResult(
            export_dir=export_dir,
            onnx_path=export_dir / FP32_FILE,
            onnx_bytes=meta["models"]["fp32"]["bytes"],
            opset=cfg.opset,
            parity_examples=parity["examples"],
            parity_max_abs_diff=parity["max_abs_diff"],
            parity_label_agreement=parity["label_agreement"],
            optimized=optimized,
            fp32_accuracy=fp32_scores.accuracy,
            fp32_f1=fp32_scores.primary,
            int8_kept=int8["kept"],
            int8_reason=int8["reason"],
            int8_bytes=int8.get("bytes"),
            int8_accuracy=int8_scores.accuracy if int8_scores else None,
            int8_f1=int8_scores.primary if int8_scores else None,
            int8_label_agreement=int8.get("label_agreement"),
            variants={name: _summary(task, entry) for name, (entry, _) in variants.items()},
            calibration={
                name: {k: v for k, v in m["calibration"].items() if k != "reliability"}
                for name, m in meta["models"].items()
                if "calibration" in m
            },
        )
        card_text = _model_card(meta, task.describe(labels))
        (tmp / "README.md").write_text(card_text, encoding="utf-8")
    if reports_dir is not None:
        result.reliability_diagram = _copy_diagram(export_dir, reports_dir, diagram)
    return result


def _behaviour(suite: behavioural.Suite, bundle: OnnxBundle, split: Any) -> dict[str, Any]:
    """bundle.json's behaviour entry: the default model's result per check (the sampled
    cases drawn from `split`, the test split)."""
    results = behavioural.run(suite, bundle, split)
    return {
        "file": suite.path.name,
        "checks": [
            {k: getattr(r, k) for k in ("name", "type", "cases", "passed", "pass_rate", "floor")}
            for r in results
        ],
    }


def _behaviour_card(meta: dict[str, Any]) -> str:
    found = meta.get("behaviour")
    if not found:
        return ""
    rows = "".join(
        f"| {c['name']} | {c['type']} | {c['cases']} | {c['pass_rate']:.4f} | {c['floor']} |\n"
        for c in found["checks"]
    )
    return (
        f"## Behavioural checks ({found['file']}), the {meta['default_model']} model\n\n"
        "CheckList-style: minimum functionality (mft), invariance (inv), direction (dir); "
        "the gate rejects a pass rate below its floor (reports/gate.md, beside the "
        "champion's).\n\n| check | type | cases | pass rate | floor |\n"
        "| --- | --- | --- | --- | --- |\n" + rows + "\n"
    )


def _reliability_diagram(meta: dict[str, Any], bundle: Path) -> bool:
    """The default model's reliability diagram in the bundle; False where it has no
    calibration (a task without calibrated scores)."""
    name = meta["default_model"]
    calibration = meta["models"][name].get("calibration")
    if calibration is None:
        return False
    title = f"Reliability: {name} model, {meta['test_examples']} test rows"
    write_reliability_diagram(calibration, bundle / RELIABILITY_FILE, title)
    return True


def _copy_diagram(export_dir: Path, reports_dir: Path, written: bool) -> Path | None:
    """reports/reliability_diagram.png: the bundle's copy, or none (a stale one removed)."""
    target = reports_dir / RELIABILITY_FILE
    if not written:
        target.unlink(missing_ok=True)
        return None
    with atomic_file(target) as tmp:
        shutil.copyfile(export_dir / RELIABILITY_FILE, tmp)
    return target


def _calibrate(task: Task, entry: dict[str, Any], bundle: OnnxBundle, prepared_dir: Path) -> None:
    """bundle.json's calibration of one model file (its own logits: int8's differ from
    fp32's), which the runtime applies to the probabilities it serves."""
    figures = task.calibrate(bundle, prepared_dir)
    if figures is not None:
        entry["calibration"] = figures


def _optimize(config: Any, src: Path, dst: Path) -> bool:
    """Fused graph when onnxruntime's optimizer handles this encoder; else False."""
    try:
        quantize.optimize_graph(src, dst, config.num_attention_heads, config.hidden_size)
    except Exception as exc:  # the optimizer raises untyped errors on graphs it cannot fuse
        warnings.warn(f"graph optimisation skipped: {exc}", stacklevel=2)
        dst.unlink(missing_ok=True)
        return False
    return True


def _check_parity(
    cfg: ExportConfig,
    task: Task,
    model: PreTrainedModel,
    tokenizer: Any,
    exported: OnnxBundle,
    test: pd.DataFrame,
    max_length: int,
    export_dir: Path,
) -> dict[str, Any]:
    """PyTorch vs onnxruntime logits on real test examples (per word for token models)."""
    head = test.head(cfg.parity_examples)
    reference, logits = task.parity_logits(model, tokenizer, exported, head, max_length)
    n = len(head)
    max_diff = float(np.abs(reference - logits).max()) if len(reference) else 0.0
    agreement = float((reference.argmax(1) == logits.argmax(1)).mean()) if len(reference) else 1.0
    if max_diff > cfg.parity_max_abs_diff or agreement < cfg.parity_min_label_agreement:
        raise ExportParityError(
            f"ONNX parity failed on {n} test examples: max |logit diff| "
            f"{max_diff:.2e} (allowed {cfg.parity_max_abs_diff:.0e}), label agreement "
            f"{agreement:.2%} (required {cfg.parity_min_label_agreement:.0%}); "
            f"the previous bundle in {export_dir} was kept"
        )
    return {"examples": n, "max_abs_diff": max_diff, "label_agreement": agreement}


def _scores(task: Task, split: TestSplit, predicted: Any) -> Scores:
    """A model file's figures on the test split: the task's accuracy and primary metric
    (bundle.json's keys drop the `test_` prefix) and the per-class report."""
    metrics, per_class = split.report(predicted)
    primary, accuracy = float(metrics[task.primary_metric]), float(metrics[task.accuracy_metric])
    figures = {
        task.accuracy_metric.removeprefix("test_"): accuracy,
        task.primary_metric.removeprefix("test_"): primary,
    }
    lower = lower_is_better(task.primary_metric, lower_is_better_metrics(task))
    label = task.primary_metric_label if lower else "F1"
    return Scores(figures, primary, accuracy, per_class, lower, label)


def _int8(
    cfg: ExportConfig,
    gate: GateConfig | None,
    task: Task,
    bundle: Path,
    fp32: tuple[TestSplit, Any, Scores],
    variant: quantize.Variant,
    flags: frozenset[str],
) -> tuple[dict[str, Any], Scores | None]:
    """Quantise one variant, score it on the whole test split, keep or remove its file.

    Each variant costs one quantisation and one pass over the test split (and, when kept,
    one over the validation split for its temperature); fp32's predictions are reused.
    Its weights are 7-bit when quantize.reduce_range_for says so for the CPU's `flags`, and
    per channel when quantize.per_channel_for says so."""
    reduce_range, why = quantize.reduce_range_for(variant.weight_type, cfg, flags)
    per_channel = quantize.per_channel_for(cfg, reduce_range)
    facts = {
        "weight_type": variant.weight_type,
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "reduce_range_reason": why,
        "cpu_flags": list(variant.cpu_flags),  # the runtime's pick reads these
        "meant_for": variant.meant_for,
    }
    if not cfg.quantize_int8:
        return {"kept": False, "reason": "not built: export.quantize_int8 is false"} | facts, None
    if variant.weight_type not in cfg.int8_weight_types:
        reason = f"not built: export.int8_weight_types does not list {variant.weight_type}"
        return {"kept": False, "reason": reason} | facts, None
    split, fp32_pred, fp32_scores = fp32
    path = bundle / variant.file
    quantize.quantize_int8(bundle / FP32_FILE, path, variant.weight_type, per_channel, reduce_range)
    int8_pred = split.rescore(load_bundle(bundle, model=variant.file))
    int8_scores = _scores(task, split, int8_pred)
    agreement = split.agreement(int8_pred, fp32_pred)
    floor = None
    if gate is not None and gate.per_class:
        floor = per_class_check(
            gate, int8_scores.per_class, split.gate_labels(int8_scores.per_class)
        )
    decision = quantize.decide(
        fp32_scores,
        int8_scores,
        agreement,
        cfg.int8_max_f1_drop,
        cfg.int8_min_label_agreement,
        floor,
    )
    figures = (
        int8_scores.figures
        | facts
        | {
            "per_class": int8_scores.per_class,
            "label_agreement": agreement,
            "f1_drop": decision.f1_drop,
            "bytes": path.stat().st_size,
        }
    )
    if not decision.kept:
        path.unlink()
        return {"kept": False, "reason": decision.reason} | figures, int8_scores
    return {"kept": True, "file": variant.file, "reason": decision.reason} | figures, int8_scores


def _summary(task: Task, entry: dict[str, Any]) -> dict[str, Any]:
    """ExportResult.variants' figures of one int8 entry of bundle.json (the task's primary
    metric and accuracy, by _scores' keys)."""
    found = {
        "kept": entry["kept"],
        "reason": entry["reason"],
        "reduce_range": entry["reduce_range"],
    }
    if "bytes" in entry:
        found |= {
            "bytes": entry["bytes"],
            "f1": entry.get(task.primary_metric.removeprefix("test_")),
            "accuracy": entry.get(task.accuracy_metric.removeprefix("test_")),
            "label_agreement": entry["label_agreement"],
        }
    return found


def _write_meta(bundle: Path, meta: dict[str, Any]) -> None:
    (bundle / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _export_onnx(
    model: torch.nn.Module,
    tokenizer: Any,
    input_names: list[str],
    opset: int,
    path: Path,
    outputs: dict[str, tuple[str, ...]],
) -> None:
    # The TorchScript exporter (dynamo=False): for BERT-class encoders it gives a clean
    # graph with dynamic batch and sequence axes in about a second, without the extra
    # onnxscript rewrite passes of the dynamo exporter.
    sample = tokenizer(
        ["a short example", "a second, slightly longer example text"],
        padding=True,
        return_tensors="pt",
    )
    args = tuple(sample[name] for name in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes |= {name: dict(enumerate(names)) for name, names in outputs.items()}
    with warnings.catch_warnings():
        # Chosen, and named rather than hidden with every other warning: torch >= 2.9
        # deprecates this exporter in favour of dynamo's; tracing warnings are about the
        # Python-level shapes the trace fixes, which the dynamic axes above undo.
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript-based ONNX", DeprecationWarning
        )
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            _LogitsOnly(model, input_names, tuple(outputs)),
            args,
            str(path),
            input_names=input_names,
            output_names=list(outputs),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def _temperature_source(c: dict[str, Any]) -> str:
    """Where a model file's served temperature comes from, for its card line."""
    fitted = f"fitted on {c['validation_rows']} validation rows"
    if c.get("temperature_kept", True):  # bundles from before the rule kept every fit
        return fitted
    return (
        f"unscaled: T {c['fitted_temperature']:.3f} {fitted} did not lower their ECE, "
        f"{c['validation_ece']:.4f} -> {c['validation_ece_fitted']:.4f}"
    )


def _model_card(meta: dict[str, Any], description: str) -> str:
    models = meta["models"]
    rows = [
        f"| {name} | {m.get('file', '—')} | {m.get('bytes', 0) / 2**20:.1f} MB | "
        f"{_fmt(m.get('accuracy', m.get('token_accuracy')))} | "
        f"{_fmt(m.get('macro_f1', m.get('entity_f1')))} | "
        f"{_fmt(m.get('label_agreement', 1.0 if name == 'fp32' else None))} | "
        f"{'yes' if name == 'fp32' or m.get('kept') else 'no: ' + m['reason']} |"
        for name, m in models.items()
    ]
    calibrated = [
        f"- {name}: temperature {c['temperature']:.3f} ({_temperature_source(c)}); test ECE "
        f"{c['test_ece']:.4f} -> {c['test_ece_calibrated']:.4f}, "
        f"Brier {c['test_brier']:.4f} -> {c['test_brier_calibrated']:.4f}\n"
        for name, m in models.items()
        if (c := m.get("calibration"))
    ]
    diagram = (
        f"![Reliability diagram of the {meta['default_model']} model]({RELIABILITY_FILE})\n\n"
        f"[{RELIABILITY_FILE}]({RELIABILITY_FILE}): the default model's accuracy against its "
        "mean top probability per equal-mass test bin, before and after temperature scaling "
        "(on the diagonal is calibrated).\n\n"
        if "calibration" in models[meta["default_model"]]
        else ""
    )
    calibration = (
        "Served probabilities are softmax(logits / temperature) "
        f"(ECE over {ECE_BINS} equal-mass bins):\n\n" + "".join(calibrated) + "\n" + diagram
        if calibrated
        else ""
    )
    quantised = [
        f"| {name} | {m['weight_type']} | {m['per_channel']} | "
        f"{'True (7-bit)' if m['reduce_range'] else 'False (8-bit)'} | "
        f"{m['reduce_range_reason']} |"
        for name, m in models.items()
        if "reduce_range" in m and "bytes" in m  # built (bundles from before: no key)
    ]
    quantisation = (
        "## int8 quantisation, on a CPU with "
        f"{', '.join(meta.get('export_cpu_flags') or []) or 'no listed flags'}\n\n"
        "| model | weights | per channel | reduce_range | why |\n"
        "| --- | --- | --- | --- | --- |\n" + "\n".join(quantised) + "\n\n"
        if quantised
        else ""
    )
    facts = {k: v for k, v in meta.items() if k not in ("models", "parity", "behaviour")}
    fact_rows = "\n".join(f"| {k} | {v} |" for k, v in facts.items())
    return (
        "# tuneops model bundle\n\n" + f"{description} Default model: {meta['default_model']}.\n\n"
        "Runs with onnxruntime + tokenizers + numpy only (no torch, no tuneops):\n\n"
        "```bash\npip install onnxruntime tokenizers numpy\n"
        'python tuneops_runtime.py --bundle . "some text"\n```\n\n'
        "```python\nfrom tuneops_runtime import load_bundle  # the runtime of the bundle's task\n"
        "load_bundle('path/to/bundle').predict(['some text'])\n```\n\n"
        f"## Models, scored on the {meta['test_examples']} test examples\n\n"
        "| model | file | size | accuracy | F1 | agreement with fp32 | kept |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\n"
        f"ONNX vs PyTorch on {meta['parity']['examples']} test examples: max |logit diff| "
        f"{meta['parity']['max_abs_diff']:.2e}, label agreement "
        f"{meta['parity']['label_agreement']:.2%}.\n\n"
        + quantisation
        + calibration
        + _behaviour_card(meta)
        + "| fact | value |\n"
        f"| --- | --- |\n{fact_rows}\n"
    )


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
