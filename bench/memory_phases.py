"""Peak memory of each phase of fit-teacher and distill, in one process (Linux).

The kernel's high-water mark (``VmHWM``) is reset between phases through ``/proc/self/clear_refs``, so each line
shows the peak of that phase alone, beside the anonymous and file-backed memory left when it ends. Compare two
sizes of the same generated table to see which phase grows with the number of rows:

    python bench/scale.py --rows 100000 3000000 --stages validate --keep     # builds the tables and stores
    python bench/memory_phases.py bench/out/scale/data-100000
    python bench/memory_phases.py bench/out/scale/data-3000000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

START = time.monotonic()


def status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) // 1024
    return out


def mark(phase: str) -> None:
    s = status()
    print(f"{time.monotonic() - START:7.1f} s  {phase:24s} peak {s['VmHWM']:6d} MB   after: anonymous "
          f"{s['RssAnon']:6d} MB, file {s['RssFile']:6d} MB", flush=True)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS


def traced(module, name: str, phase: str | None = None) -> None:
    """Wrap ``module.name`` so each call ends with a mark."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        out = inner(*args, **kwargs)
        mark(phase or name)
        return out

    setattr(module, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    mark("start")
    import cpfd.train.schedule as schedule
    from cpfd.config import RunConfig
    from cpfd.data import load_dataset
    from cpfd.train.loop import make_fabric

    mark("imports")
    cfg = RunConfig()
    cfg.train.epochs, cfg.train.min_steps, cfg.train.progress = args.epochs, 0, False
    data = load_dataset(args.dataset, log=lambda _m: None, extract=cfg.extract)
    mark("load_dataset")
    for name in ("build_teacher", "build_student", "teacher_targets", "teacher_report", "evaluate_student",
                 "weight_diagnostics"):
        traced(schedule, name)
    traced(schedule, "fit", "fit (training epochs)")
    fabric = make_fabric(cfg.train)
    runs = Path(tempfile.mkdtemp(prefix="memory_phases-"))
    try:
        schedule.fit_teacher(data, cfg, runs / "teacher", fabric, log=lambda _m: None)
        mark("fit_teacher end")
        schedule.distill(data, cfg, runs / "student", fabric, teacher_dir=runs / "teacher", log=lambda _m: None)
        mark("distill end")
    finally:
        shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
