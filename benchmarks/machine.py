"""The machine a benchmark ran on, printed at the top of every benchmark's output."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def machine_line(extra: str = "") -> str:
    """One line: platform, cpu, cores, Python (and ``extra``)."""
    line = f"{platform.platform()}; {cpu_model()}; {os.cpu_count()} cores; Python {platform.python_version()}"
    return f"{line}; {extra}" if extra else line
