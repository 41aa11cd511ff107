"""What every benchmark script shares: the machine line, percentiles, and the table printer.

Benchmarks print; they never assert on time (the test suite does not collect this folder:
its files are named ``bench_*.py``). Each script is run from the repository root as
``python -m tests.bench.<name>``.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from collections.abc import Sequence

from posguard.supervisor.demo import percentile

__all__ = ["machine", "ms", "percentile", "print_table", "rss_bytes"]


def machine() -> str:
    """One line naming what the figures were measured on (they mean nothing without it)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
        redis = redis.split()[2].removeprefix("v=") if redis else "?"
    except OSError:
        redis = "missing"
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"redis-server {redis}, {platform.system()} {platform.release()}")


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table: first column left-aligned, the rest right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )

    print()
    print(title)
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    sys.stdout.flush()


def ms(seconds: float) -> str:
    return "n/a" if seconds != seconds else f"{seconds * 1000:.1f} ms"  # NaN check
