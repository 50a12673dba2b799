"""A description of the machine a measurement was taken on: CPU model and vector extensions,
cores available to this process, memory, OS, library versions, and the load average (a shared CPU
makes absolute times drift; the load tells the reader how calm the machine was)."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

# Instruction-set extensions that decide convolution speed on x86 / ARM CPUs.
_INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                      "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "sve")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The subset of CPU flags that matter for inference speed (empty when unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    have = set(value.split())
                    return [fl for fl in _INTERESTING_FLAGS if fl in have]
    except OSError:
        pass
    return []


def usable_cores() -> int:
    """Logical CPUs this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    """Everything above as one JSON-ready dict."""
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_bytes": memory_bytes(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in ("torch", "onnxruntime", "onnx", "numpy", "onnxslim")},
        "load_average": load_average(),
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }


def describe_machine(info: dict[str, Any] | None = None) -> str:
    """One line for a report header: CPU, cores, OS and the versions that matter."""
    info = info or machine_info()
    v = info["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "onnx") if v.get(k))
    load = info.get("load_average")
    load_s = f"; load {load[0]:.2f}" if load else ""
    return (f"{info['cpu']} ({info['usable_cores']} of {info['logical_cpus']} logical CPUs usable); "
            f"{info['os']}; Python {info['python']}; {libs}{load_s}")
