"""The runtime's pick of a bundle's model file by the CPU it runs on (issue 20)."""

from typing import Any

import pytest

from tuneops.runtime import ModelChoice, choose_model, cpu_flags

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma avx512_vnni
processor\t: 1
flags\t\t: fpu sse2 avx avx2 fma avx512_vnni
"""

S8_FLAGS = ["avx512_vnni", "avx_vnni", "amx_int8"]


def _meta(u8_kept: bool = True, s8_kept: bool = True) -> dict[str, Any]:
    def variant(kept: bool, file: str, flags: list[str], meant: str) -> dict[str, Any]:
        entry = {"kept": kept, "cpu_flags": flags, "meant_for": meant}
        return entry | ({"file": file, "reason": "ok"} if kept else {"reason": "left out: F1"})

    return {
        "default_model": "int8" if u8_kept else "fp32",
        "models": {
            "fp32": {"file": "model.onnx"},
            "int8": variant(u8_kept, "model.int8.onnx", [], "any CPU"),
            "int8_s8": variant(s8_kept, "model.int8s8.onnx", S8_FLAGS, "VNNI or AMX CPUs"),
        },
    }


def test_cpu_flags_are_read_from_cpuinfo_text() -> None:
    assert cpu_flags(CPUINFO) == {"fpu", "sse2", "avx", "avx2", "fma", "avx512_vnni"}
    assert cpu_flags("processor: 0\nFeatures: neon asimd\n") == frozenset()


@pytest.mark.parametrize("flag", S8_FLAGS)
def test_a_cpu_with_vnni_or_amx_runs_signed_weights(flag: str) -> None:
    assert choose_model(_meta(), frozenset({"avx2", "fma", flag})) == ModelChoice(
        "int8_s8", f"this CPU has {flag}: VNNI or AMX CPUs"
    )


def test_an_avx2_only_cpu_runs_unsigned_weights_and_says_why() -> None:
    assert choose_model(_meta(), frozenset({"avx2", "fma"})) == ModelChoice(
        "int8", "any CPU; int8_s8 needs one of avx512_vnni, avx_vnni, amx_int8"
    )


def test_a_vnni_cpu_falls_back_to_unsigned_weights_when_signed_ones_were_left_out() -> None:
    choice = choose_model(_meta(s8_kept=False), frozenset({"avx512_vnni"}))
    assert choice == ModelChoice(
        "int8",
        "any CPU; int8_s8 needs one of avx512_vnni, avx_vnni, amx_int8 and was left out: F1",
    )


def test_fp32_when_no_int8_variant_passed_and_an_override_wins() -> None:
    meta = _meta(u8_kept=False, s8_kept=False)
    assert choose_model(meta, frozenset({"amx_int8"})) == ModelChoice(
        "fp32", "no int8 variant in this bundle (int8: left out: F1; int8_s8: left out: F1)"
    )
    assert choose_model(_meta(), frozenset({"amx_int8"}), "fp32") == ModelChoice(
        "fp32", "asked for 'fp32'"
    )
    assert choose_model(_meta(), frozenset({"avx2"}), "auto").model == "int8"


def test_a_bundle_from_before_per_cpu_variants_runs_its_default_model() -> None:
    old = {"default_model": "int8", "models": {"fp32": {}, "int8": {"kept": True, "file": "x"}}}
    assert choose_model(old, frozenset({"avx512_vnni"})) == ModelChoice(
        "int8", "bundle.json default_model (it records no per-CPU variants)"
    )
