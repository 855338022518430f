"""Peak memory while a block runs: CUDA allocator peak on a GPU, sampled process RSS on CPU."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import torch


@dataclass
class PeakMemory:
    """`peak_mb`: the block's peak (GPU: allocated tensors; CPU: the process's resident set).

    On CPU the resident set is sampled every `interval_s`, so a spike shorter than that can
    be missed; it also includes everything the process held before the block.
    """

    peak_mb: float = 0.0


@contextmanager
def peak_memory(device: str, interval_s: float = 0.05) -> Iterator[PeakMemory]:
    result = PeakMemory()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        yield result
        result.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        return
    process = psutil.Process()
    peak = process.memory_info().rss
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(interval_s):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, name="peak-memory", daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result.peak_mb = max(peak, process.memory_info().rss) / 2**20
