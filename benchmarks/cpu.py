"""The machine a benchmark figure was measured on: CPU model, the SIMD flags that decide
which kernels run (AVX2, AVX-512, VNNI, BF16, AMX), and the core count. Every benchmark
prints and stores it beside its figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                wanted = (
                    "avx2",
                    "fma",
                    "avx512f",
                    "avx512_vnni",
                    "avx_vnni",
                    "avx512_bf16",
                    "amx_bf16",
                    "amx_int8",
                )
                flags = [f for f in line.split(":", 1)[1].split() if f in wanted]
    return {"cpu": cpu, "flags": flags, "cores": os.cpu_count()}
