"""The machine a benchmark runs on: its description (CPU, RAM, GPU, library versions, git
commit) and the extra memory one block of work needs (:class:`PeakMemory`)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

MB = 2.0**20


# ----------------------------------------------------------------------------------------
# Peak memory of one solve
# ----------------------------------------------------------------------------------------


class PeakMemory:
    """Context manager measuring the extra memory a block needs, in MB (``.mb``).

    CUDA: max_memory_allocated − memory_allocated before (``kind = "cuda-allocated"``).
    Linux CPU: resident high-water mark (reset on entry) − resident size on entry
    (``kind = "rss"``); freed heap memory is returned to the system first (malloc_trim)
    so that the baseline is not inflated by earlier solves.  Elsewhere: growth of
    ``ru_maxrss`` (``kind = "maxrss-lower-bound"``; 0 unless the block sets a new record).
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.kind = "cuda-allocated" if self.cuda else ("rss" if _can_reset_hwm()
                                                          else "maxrss-lower-bound")
        self.mb = 0.0
        self._base = 0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        gc.collect()
        _malloc_trim()
        if self.kind == "rss":
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._base = _proc_status_kb("VmRSS") * 1024
        else:
            self._base = _maxrss_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self.kind == "rss":
            peak = _proc_status_kb("VmHWM") * 1024
        else:
            peak = _maxrss_bytes()
        self.mb = max(peak - self._base, 0) / MB


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_status_kb("VmHWM") > 0
    except OSError:
        return False


def _proc_status_kb(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ----------------------------------------------------------------------------------------
# Machine record
# ----------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, GPU, torch threads, library versions and the git commit."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    try:
        import astra

        info["astra"] = getattr(astra, "__version__", None) or str(astra.astra.version())
    except Exception:  # astra missing or broken: record that, do not fail the benchmark
        info["astra"] = None
    from .. import __version__

    info["ctflow"] = __version__
    info["git_commit"] = _git_commit()
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2.0**30, 1)
    return None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("+dirty" if dirty.strip() else "")
