import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.metrics import classification_report

from pipeline.export import ExportResult, export
from pipeline.gate import per_class_check
from pipeline.quantize import Scores, decide
from pipeline.training.modeling import load_classifier, load_tokenizer, predict_logits
from tests.conftest import TEXT, Trained
from tuneops.config import ExportConfig, GateConfig
from tuneops.errors import ExportParityError
from tuneops.runtime import BundleError, OnnxClassifier


def test_bundle_holds_model_tokenizer_labels_metadata_and_card(exported: ExportResult) -> None:
    names = {p.name for p in exported.export_dir.iterdir()}
    files = {"model.onnx", "tokenizer.json", "labels.json", "bundle.json", "README.md"}
    files |= {"reliability_diagram.png"}  # the default model's calibration (issue 19)
    int8_files = {"model.int8.onnx", "model.int8s8.onnx"}
    assert files | {"tuneops_runtime.py"} <= names <= files | {"tuneops_runtime.py"} | int8_files
    meta = json.loads((exported.export_dir / "bundle.json").read_text())
    assert meta["models"]["fp32"]["graph_optimized"] is True
    assert ("model.int8.onnx" in names) == meta["models"]["int8"]["kept"]
    assert ("model.int8s8.onnx" in names) == meta["models"]["int8_s8"]["kept"]
    assert meta["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert meta["parity"]["label_agreement"] == 1.0
    assert meta["parity"]["max_abs_diff"] <= 1e-4


def test_onnx_reproduces_pytorch_logits_at_other_batch_sizes_and_lengths(
    exported: ExportResult, trained: Trained
) -> None:
    texts = pd.read_parquet(trained.paths.data_prepared / "test.parquet")["text"].tolist()[:23]
    texts.append("word " * 200)  # longer than max_length: truncated the same way by both
    model = load_classifier(trained.paths.candidate)
    tokenizer = load_tokenizer(trained.paths.candidate)
    reference = predict_logits(model, tokenizer, texts, trained.params.train.max_length, 7)
    onnx_logits = OnnxClassifier(exported.export_dir, model="fp32").logits(texts, batch_size=5)
    np.testing.assert_allclose(onnx_logits, reference, atol=1e-4)


def test_failed_parity_raises_and_keeps_the_previous_bundle(
    exported: ExportResult, trained: Trained
) -> None:
    before = (exported.export_dir / "model.onnx").read_bytes()
    strict = ExportConfig(parity_max_abs_diff=1e-30)  # no float32 export can meet this
    with pytest.raises(ExportParityError, match=r"previous bundle .* was kept"):
        export(
            TEXT,
            strict,
            trained.params.train.max_length,
            trained.paths.candidate,
            trained.paths.data_prepared,
            trained.paths.export,
        )
    assert (exported.export_dir / "model.onnx").read_bytes() == before


# What each variant's bundle.json entry says besides its figures (issue 20).
VARIANT_FACTS = {
    "int8": ("model.int8.onnx", "uint8", []),
    "int8_s8": ("model.int8s8.onnx", "int8", ["avx512_vnni", "avx_vnni", "amx_int8"]),
}


@pytest.mark.audit("M2")
def test_each_int8_variant_is_scored_on_the_whole_test_split_and_shipped_when_kept(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uint8 and int8 weights both pass a rule that allows any drop: both files ship, each
    with its own figures, and the runtime picks one by the CPU's flags (issue 20)."""
    p = trained.params
    cfg = ExportConfig(int8_max_f1_drop=1.0, int8_min_label_agreement=0.0)  # always kept
    out = tmp_path / "bundle"
    result = export(
        TEXT,
        cfg,
        p.train.max_length,
        trained.paths.candidate,
        trained.paths.data_prepared,
        out,
        cpu_flags=frozenset({"avx2", "avx512_vnni"}),  # 8-bit weights per tensor (auto)
    )
    meta = json.loads((out / "bundle.json").read_text())
    test = pd.read_parquet(trained.paths.data_prepared / "test.parquet")
    texts = test["text"].tolist()
    assert result.int8_kept and meta["default_model"] == "int8"
    assert meta["test_examples"] == len(test)
    fp32 = OnnxClassifier(out, model="fp32").logits(texts).argmax(1)
    for name, (file, weight_type, flags) in VARIANT_FACTS.items():
        entry = meta["models"][name]
        assert (entry["kept"], entry["file"], entry["weight_type"]) == (True, file, weight_type)
        assert (entry["per_channel"], entry["cpu_flags"]) == (False, flags)
        assert entry["bytes"] == (out / file).stat().st_size
        # The recorded figures are those of the shipped file on every test row.
        int8 = OnnxClassifier(out, model=name)
        assert int8.model_file == file
        predicted = int8.logits(texts).argmax(1)
        accuracy = float((predicted == test["label_id"].to_numpy()).mean())
        assert entry["accuracy"] == pytest.approx(accuracy, abs=1e-12)
        assert entry["label_agreement"] == pytest.approx((fp32 == predicted).mean())
        assert result.variants[name]["f1"] == entry["macro_f1"]
        # Dynamic int8 stores weights in a quarter of the bytes (embeddings included).
        assert entry["bytes"] < 0.4 * meta["models"]["fp32"]["bytes"]
    assert OnnxClassifier(out, flags=frozenset({"avx2", "fma"})).model_file == "model.int8.onnx"
    head = texts[:6]
    want = [x.label for x in OnnxClassifier(out, model="fp32").predict(head)]
    for flags, file in [
        ({"avx2", "avx512_vnni"}, "model.int8s8.onnx"),
        ({"amx_int8"}, "model.int8s8.onnx"),
        ({"avx_vnni"}, "model.int8s8.onnx"),
        ({"avx2"}, "model.int8.onnx"),
    ]:
        picked = OnnxClassifier(out, flags=frozenset(flags))
        assert picked.model_file == file and picked.choice.reason
        assert [x.label for x in picked.predict(head)] == want
    vnni = frozenset({"avx512_vnni"})
    assert OnnxClassifier(out, model="fp32", flags=vnni).model_file == "model.onnx"
    monkeypatch.setenv("TUNEOPS_MODEL", "int8")
    env = OnnxClassifier(out, flags=vnni)
    assert (env.model_file, env.choice.reason) == ("model.int8.onnx", "TUNEOPS_MODEL=int8")
    assert OnnxClassifier(out, model="default", flags=vnni).model_file == "model.int8.onnx"


def test_without_int8_the_bundle_says_why_and_serves_fp32(trained: Trained, tmp_path: Path) -> None:
    p = trained.params
    out = tmp_path / "bundle"
    export(
        TEXT,
        ExportConfig(quantize_int8=False, optimize=False),
        p.train.max_length,
        trained.paths.candidate,
        trained.paths.data_prepared,
        out,
    )
    meta = json.loads((out / "bundle.json").read_text())
    assert not (out / "model.int8.onnx").exists()
    assert meta["default_model"] == "fp32"
    for name, (_, weight_type, flags) in VARIANT_FACTS.items():
        entry = meta["models"][name]
        assert (entry["kept"], entry["reason"]) == (
            False,
            "not built: export.quantize_int8 is false",
        )
        assert (entry["weight_type"], entry["cpu_flags"]) == (weight_type, flags)
        assert "file" not in entry and "bytes" not in entry
    assert meta["models"]["fp32"]["graph_optimized"] is False
    with pytest.raises(
        BundleError, match=r"'int8' is not available \(not built: export\.quantize_int8 is false\)"
    ):
        OnnxClassifier(out, model="int8")


def test_an_int8_model_losing_more_than_the_allowed_macro_f1_is_left_out() -> None:
    fp32, int8 = Scores({}, 0.8633, 0.87), Scores({}, 0.8412, 0.85)
    decision = decide(fp32, int8, agreement=0.95, max_f1_drop=0.01)
    assert not decision.kept
    assert decision.f1_drop == pytest.approx(0.0221)
    assert decision.reason == (
        "left out: F1 0.8412 vs fp32 0.8633 is a drop of 0.0221, more than "
        "export.int8_max_f1_drop=0.0100"
    )
    assert decide(fp32, Scores({}, 0.8540, 0.86), 0.97, 0.01).kept


@pytest.mark.audit("M2")
def test_an_int8_model_with_equal_f1_but_low_agreement_or_a_class_below_its_floor_is_left_out() -> (
    None
):
    fp32, int8 = Scores({}, 0.8633, 0.87), Scores({}, 0.8633, 0.87)  # same F1: other rows
    low = decide(fp32, int8, agreement=0.95, max_f1_drop=0.01, min_agreement=0.97)
    assert (low.kept, low.reason) == (
        False,
        "left out: label agreement with fp32 95.00% is below "
        "export.int8_min_label_agreement=97.00%",
    )
    cfg = GateConfig(per_class_floor=0.5)
    starved = per_class_check(cfg, {"a": {"recall": 0.9}, "b": {"recall": 0.42}}, ["a", "b"])
    failed = decide(fp32, int8, 0.99, 0.01, 0.97, starved)
    assert (failed.kept, failed.reason) == (
        False,
        "left out: per_class_recall below 0.5: {'b': 0.42} (the gate's per-class floor)",
    )
    held = per_class_check(cfg, {"a": {"recall": 0.9}, "b": {"recall": 0.6}}, ["a", "b"])
    assert decide(fp32, int8, 0.99, 0.01, 0.97, held).kept


@pytest.mark.audit("M2")
def test_bundle_records_each_file_s_per_class_report_and_int8_fails_the_per_class_floor(
    trained: Trained, tmp_path: Path
) -> None:
    """A floor no class of this tiny model meets: int8 weights are left out, fp32 ships
    and runs even on a VNNI CPU, and bundle.json holds sklearn's per-class report of each
    file. Only int8 weights are asked for: uint8's entry says it was not built."""
    p = trained.params
    out = tmp_path / "bundle"
    cfg = ExportConfig(
        int8_max_f1_drop=1.0, int8_min_label_agreement=0.0, int8_weight_types=["int8"]
    )
    result = export(
        TEXT,
        cfg,
        p.train.max_length,
        trained.paths.candidate,
        trained.paths.data_prepared,
        out,
        gate=GateConfig(per_class_floor=1.0),
    )
    meta = json.loads((out / "bundle.json").read_text())
    test = pd.read_parquet(trained.paths.data_prepared / "test.parquet")
    labels = json.loads((out / "labels.json").read_text())
    fp32 = OnnxClassifier(out, model="fp32").logits(test["text"].tolist()).argmax(1)
    report = classification_report(
        test["label_id"],
        fp32,
        labels=[0, 1],
        target_names=labels,
        output_dict=True,
        zero_division=0,
    )
    assert meta["models"]["fp32"]["per_class"] == report
    int8 = meta["models"]["int8_s8"]["per_class"]
    recalls = {k: round(int8[k]["recall"], 4) for k in labels if int8[k]["recall"] < 1.0}
    assert not result.int8_kept and meta["default_model"] == "fp32"
    why = f"left out: per_class_recall below 1.0: {recalls} (the gate's per-class floor)"
    assert meta["models"]["int8_s8"]["reason"] == why
    assert (meta["models"]["int8"]["kept"], meta["models"]["int8"]["reason"]) == (
        False,
        "not built: export.int8_weight_types does not list uint8",
    )
    assert not (out / "model.int8.onnx").exists() and not (out / "model.int8s8.onnx").exists()
    picked = OnnxClassifier(out, flags=frozenset({"avx512_vnni"}))
    assert picked.model_file == "model.onnx"
    assert picked.choice.reason == (
        "no int8 variant in this bundle (int8: not built: export.int8_weight_types does "
        f"not list uint8; int8_s8: {why})"
    )


def _weight_range(path: Path, data_type: int) -> tuple[int, int]:
    """The smallest and largest stored value of the file's quantised weight matrices of
    `data_type` (onnxruntime stores the embedding tables as uint8 whatever the weight type)."""
    model = onnx.load(str(path))
    values = [
        onnx.numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.data_type == data_type and len(t.dims) == 2  # matrices: not zero points, scales
    ]
    return int(min(v.min() for v in values)), int(max(v.max() for v in values))


@pytest.mark.audit("M2")
def test_signed_weights_exported_on_a_cpu_without_vnni_are_7_bit_and_bundle_json_says_why(
    trained: Trained, tmp_path: Path
) -> None:
    """On an AVX2-only CPU onnxruntime's u8s8 kernel saturates with 8-bit signed weights,
    so export would score the VNNI variant by a kernel it is not meant for and leave it out
    (issue 20: 95.99% agreement on the default model). With export.int8_reduce_range auto
    the signed weights are stored in 7 bits ([-64, 64], onnxruntime's remedy) when the
    exporting CPU has no VNNI or AMX, and in the full 8 bits when it has; uint8 weights run
    the u8u8 kernel, which does not saturate, and keep 8 bits either way."""
    p = trained.params
    cfg = ExportConfig(int8_max_f1_drop=1.0, int8_min_label_agreement=0.0)  # always kept
    runs = {}
    for cpu, flags in {"avx2": {"avx2", "fma", "sse4_2"}, "vnni": {"avx2", "avx512_vnni"}}.items():
        out = tmp_path / cpu
        export(
            TEXT,
            cfg,
            p.train.max_length,
            trained.paths.candidate,
            trained.paths.data_prepared,
            out,
            cpu_flags=frozenset(flags),
        )
        runs[cpu] = (out, json.loads((out / "bundle.json").read_text()))
    out, meta = runs["avx2"]
    assert meta["export_cpu_flags"] == ["avx2", "fma"]  # the flags the int8 kernels depend on
    s8 = meta["models"]["int8_s8"]
    # per channel: export.int8_per_channel auto pairs it with 7-bit weights
    assert (s8["kept"], s8["reduce_range"], s8["per_channel"]) == (True, True, True)
    assert s8["reduce_range_reason"] == (
        "export.int8_reduce_range=auto: the exporting CPU has none of avx512_vnni, avx_vnni, "
        "amx_int8, and its u8s8 kernel saturates with 8-bit signed weights; 7-bit weights "
        "do not saturate, so the figures scored here are those a VNNI CPU computes"
    )
    assert _weight_range(out / "model.int8s8.onnx", onnx.TensorProto.INT8) == (-64, 64)
    u8 = meta["models"]["int8"]
    assert (u8["reduce_range"], u8["per_channel"], u8["reduce_range_reason"]) == (
        False,
        False,
        "export.int8_reduce_range=auto: uint8 weights run the u8u8 kernel, which does not saturate",
    )
    assert _weight_range(out / "model.int8.onnx", onnx.TensorProto.UINT8) == (0, 255)
    card = (out / "README.md").read_text()
    assert "| int8_s8 | int8 | True | True (7-bit) | " + s8["reduce_range_reason"] in card
    assert "| export_cpu_flags | ['avx2', 'fma'] |" in card

    out, meta = runs["vnni"]
    assert meta["export_cpu_flags"] == ["avx2", "avx512_vnni"]
    s8 = meta["models"]["int8_s8"]
    assert (s8["kept"], s8["reduce_range"], s8["per_channel"]) == (True, False, False)
    assert s8["reduce_range_reason"] == (
        "export.int8_reduce_range=auto: the exporting CPU has avx512_vnni, whose kernel "
        "accumulates in 32 bits without saturating"
    )
    low, high = _weight_range(out / "model.int8s8.onnx", onnx.TensorProto.INT8)
    assert max(-low, high) == 127  # symmetric 8-bit: each matrix's largest |weight| -> 127


@pytest.mark.parametrize(
    ("setting", "weight_type", "flags", "reduced", "why"),
    [
        (True, "uint8", {"avx512_vnni"}, True, "export.int8_reduce_range is true"),
        (True, "int8", {"amx_int8"}, True, "export.int8_reduce_range is true"),
        (False, "int8", {"avx2"}, False, "export.int8_reduce_range is false"),
        ("auto", "int8", set(), True, "has none of avx512_vnni"),  # no /proc/cpuinfo flags
        ("auto", "int8", {"avx_vnni", "amx_int8"}, False, "has amx_int8, avx_vnni, whose"),
    ],
)
def test_int8_reduce_range_true_or_false_overrides_the_cpu(
    setting: bool | str, weight_type: str, flags: set[str], reduced: bool, why: str
) -> None:
    from pipeline.quantize import per_channel_for, reduce_range_for

    cfg = ExportConfig(int8_reduce_range=setting)
    got, reason = reduce_range_for(weight_type, cfg, frozenset(flags))
    assert got is reduced and why in reason
    assert per_channel_for(cfg, got) is reduced  # auto: per channel with 7-bit weights
    for fixed in (True, False):
        assert per_channel_for(ExportConfig(int8_per_channel=fixed), got) is fixed
