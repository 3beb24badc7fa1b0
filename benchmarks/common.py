"""What every benchmark script shares: one BLAS thread, the machine record, saving results.

Imported first by each script (before numpy), so the thread setting takes effect.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any

# One BLAS thread unless told otherwise: on a shared 2-core machine a multi-threaded BLAS
# call spins against other processes (a 10k-row numpy dot went from 0.2 to 12 ms).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.fspath(ROOT))

from fastslow_cli.atomic import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_NOTE = (
    "The machine is shared: other processes were running on its cores during this run, so "
    "absolute times are noisy and only the ratios between rows measured in the same run mean anything."
)


def add_output_args(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """`--quick` (a smoke run) and `--out DIR` (where the JSON and Markdown go)."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine(**versions: str | None) -> dict[str, Any]:
    """Python, CPUs and load average now; callers add `load_avg_at_end` (`load_average()`) when they finish."""
    return {
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "blas_threads": os.environ["OPENBLAS_NUM_THREADS"],
        "load_avg_at_start": load_average(),
        "shared_machine": SHARED_NOTE,
        **versions,
    }


def save(out: Path, name: str, report: dict[str, Any], markdown: str) -> None:
    """Write `name.json` and `name.md` under `out`, print the Markdown and where it went."""
    atomic_write_json(out / f"{name}.json", report)
    atomic_write_text(out / f"{name}.md", markdown)
    print(markdown)
    print(f"saved {out / (name + '.json')} and {out / (name + '.md')}")
