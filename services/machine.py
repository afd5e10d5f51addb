"""A one-line description of the machine a benchmark ran on (CPU model, cores, the ISA that matters)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# ONNX Runtime's int8 kernels and FAISS pick code paths by these flags: a result without them is unreadable
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def describe() -> str:
    """E.g. ``2 CPUs, AMD EPYC (avx2 avx512f avx512_vnni), Linux-6.1-x86_64``."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name":
                model = val.strip()
            elif key.strip() == "flags":
                flags = set(val.split())
                break
    except OSError:
        pass
    isa = " ".join(f for f in _FLAGS if f in flags) or "no AVX2"
    return f"{os.cpu_count()} CPUs, {model} ({isa}), {platform.platform(terse=True)}"
