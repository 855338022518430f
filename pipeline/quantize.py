"""Graph optimisation and dynamic int8 quantisation of an exported ONNX model.

Both use onnxruntime's own tools: the transformer optimizer fuses attention, layer norm
and GELU into single kernels; `quantize_dynamic` stores MatMul weights as int8 and
quantises activations on the fly, which needs no calibration data.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx

from pipeline.gate import GateCheck
from pipeline.tasks.base import Scores
from tuneops.config import ExportConfig


@dataclass(frozen=True)
class Variant:
    """One int8 file of the bundle: how it is quantised and which CPUs it is meant for.

    `cpu_flags`: /proc/cpuinfo flags of which the runtime needs one to pick this variant
    (empty: any CPU). bundle.json records them, so the runtime needs no table of its own.
    """

    name: str  # bundle.json's models key
    file: str
    weight_type: str  # export.int8_weight_types' value
    cpu_flags: tuple[str, ...]
    meant_for: str


# Signed int8 weights run onnxruntime's s8s8/u8s8 VNNI and AMX kernels: 1.42 ms against
# uint8 weights' 2.71 ms at batch 1 on a Xeon with AVX-512 VNNI and AMX (issue 20). On an
# AVX2-only CPU the u8s8 kernel (vpmaddubsw) can saturate, which cost 1.2 points of
# macro-F1 here, so uint8 stays the variant for every other CPU. The runtime prefers a
# variant whose flags the CPU has to one meant for any CPU.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
VARIANTS = (
    Variant(
        "int8",
        "model.int8.onnx",
        "uint8",
        (),
        "any CPU (unsigned weights: no u8s8 saturation on AVX2-only CPUs)",
    ),
    Variant(
        "int8_s8",
        "model.int8s8.onnx",
        "int8",
        VNNI_FLAGS,
        "CPUs with AVX-512 VNNI, AVX-VNNI or AMX (signed weights; may saturate on AVX2 only)",
    ),
)


# The flags bundle.json records of the exporting CPU (export_cpu_flags): those that decide
# which int8 kernels scored the variants there.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", *VNNI_FLAGS)


def reduce_range_for(
    weight_type: str, cfg: ExportConfig, flags: frozenset[str]
) -> tuple[bool, str]:
    """Whether a variant's weights are stored in 7 bits (onnxruntime's reduce_range), and why.

    export.int8_reduce_range true or false decides for every weight type. "auto": signed
    weights are 7-bit when the exporting CPU (`flags`) has none of VNNI_FLAGS. There they
    run the u8s8 kernel (vpmaddubsw), whose 16-bit sums of two u8*s8 products saturate with
    8-bit weights (255 * 127 * 2 > 32767) but not with 7-bit ones (255 * 64 * 2 < 32767),
    onnxruntime's documented remedy. Without saturation the integer sums are exact on both
    kernels, so the figures export scores here are those of the VNNI CPUs the variant is
    meant for (up to float rounding outside the integer products); with 8-bit weights
    export left it out on 95.99% agreement (issue 20). On a VNNI CPU the kernel sums in
    32 bits and full 8-bit weights are scored as they run.
    Unsigned weights run the u8u8 kernel (16-bit operands, 32-bit sums): no saturation.
    """
    setting = cfg.int8_reduce_range
    if setting != "auto":
        return bool(setting), f"export.int8_reduce_range is {str(setting).lower()}"
    auto = "export.int8_reduce_range=auto"
    if weight_type == "uint8":
        return False, f"{auto}: uint8 weights run the u8u8 kernel, which does not saturate"
    has = sorted(flags & set(VNNI_FLAGS))
    if has:
        return False, (
            f"{auto}: the exporting CPU has {', '.join(has)}, whose kernel accumulates in "
            "32 bits without saturating"
        )
    return True, (
        f"{auto}: the exporting CPU has none of {', '.join(VNNI_FLAGS)}, and its u8s8 kernel "
        "saturates with 8-bit signed weights; 7-bit weights do not saturate, so the figures "
        "scored here are those a VNNI CPU computes"
    )


def per_channel_for(cfg: ExportConfig, reduce_range: bool) -> bool:
    """export.int8_per_channel, where "auto" is per channel exactly for 7-bit weights.

    onnxruntime's docs pair the two on AVX2 CPUs, and on the default model (998 test rows,
    issue 20) 7-bit signed weights per tensor agreed with fp32 on 92.99% of the rows, per
    channel on 97.60% (8-bit per tensor, saturating: 95.99%; uint8 per tensor: 98.00%)."""
    setting = cfg.int8_per_channel
    return reduce_range if setting == "auto" else bool(setting)


@dataclass(frozen=True)
class Int8Decision:
    kept: bool
    reason: str
    f1_drop: float
    label_agreement: float


def optimize_graph(src: Path, dst: Path, num_heads: int, hidden_size: int) -> None:
    """Fuse the encoder's subgraphs (attention, LayerNorm, GELU) with onnxruntime's optimizer."""
    from onnxruntime.transformers import optimizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        optimized = optimizer.optimize_model(
            str(src),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=1,  # offline fusions only; the session applies the rest at load time
        )
    optimized.save_model_to_file(str(dst))


def quantize_int8(
    src: Path, dst: Path, weight_type: str, per_channel: bool, reduce_range: bool = False
) -> None:
    """Dynamic int8 quantisation of every op onnxruntime supports.

    On a fused graph that covers Attention and the embedding lookup as well as the
    MatMul weights, so the file shrinks about 4x, not only the dense layers.
    `weight_type` "uint8" is the default because on x86 CPUs without VNNI (AVX2 only)
    onnxruntime's u8s8 kernel can saturate (onnxruntime's quantisation docs): measured
    here, signed weights lost 1.2 points of macro-F1 and unsigned ones 0.2.
    `reduce_range` stores the weights in 7 bits ([-64, 64] for int8), onnxruntime's
    documented remedy for that saturation (see reduce_range_for).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("root").setLevel(logging.ERROR)
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=reduce_range,
            # Fused contrib ops (Attention, SkipLayerNorm) defeat ONNX shape inference;
            # their outputs are float, which is what this tells the quantiser.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def decide(
    fp32: Scores,
    int8: Scores,
    agreement: float,
    max_f1_drop: float,
    min_agreement: float = 0.0,
    per_class: GateCheck | None = None,
) -> Int8Decision:
    """Keep the int8 model (it then becomes the bundle's default, the file the gate judges
    and the server runs) only when it loses at most `max_f1_drop` of the task's primary
    metric (macro-F1, entity-F1), agrees with fp32 on at least `min_agreement` of the
    predictions, and passes the gate's per-class floor (`per_class`, None when off)."""
    # A drop is a loss of quality: for a lower-is-better metric (MAE) its rise.
    drop = int8.primary - fp32.primary if fp32.lower_is_better else fp32.primary - int8.primary
    if drop > max_f1_drop:
        reason = (
            f"left out: {fp32.label} {int8.primary:.4f} vs fp32 {fp32.primary:.4f} is a drop of "
            f"{drop:.4f}, more than export.int8_max_f1_drop={max_f1_drop:.4f}"
        )
        return Int8Decision(False, reason, drop, agreement)
    if agreement < min_agreement:
        reason = (
            f"left out: label agreement with fp32 {agreement:.2%} is below "
            f"export.int8_min_label_agreement={min_agreement:.2%}"
        )
        return Int8Decision(False, reason, drop, agreement)
    if per_class is not None and not per_class.passed:
        reason = f"left out: {per_class.name} {per_class.detail} (the gate's per-class floor)"
        return Int8Decision(False, reason, drop, agreement)
    reason = (
        f"{fp32.label} drop {drop:+.4f} within the allowed {max_f1_drop:.4f}, label agreement "
        f"{agreement:.2%} >= {min_agreement:.2%}"
        + (f", {per_class.name} {per_class.detail}" if per_class is not None else "")
    )
    return Int8Decision(True, reason, drop, agreement)
