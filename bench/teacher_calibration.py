"""The teacher's temperature rule on the same logits, this checkout's against an earlier revision's (issue 8: test
ECE after calibration must not exceed before). Fits one teacher per seed (or reuses the run folders), then
applies ``choose_temperature`` from both revisions to its cached logits; the teacher itself does not change.

    python bench/teacher_calibration.py breast_cancer --against 351d641~1 --seeds 5   # a table of bench/tabular.py
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, run_cpfd  # noqa: E402
from tabular import BUILDERS  # noqa: E402


def calibration_module(rev: str):
    """``cpfd.distill.calibration`` as it was at git revision ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:src/cpfd/distill/calibration.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "calibration_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("calibration_then", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    from cpfd.data.prepared import load_dataset
    from cpfd.distill import calibration
    from cpfd.distill.targets import load_targets
    from cpfd.evaluate.evaluation import evaluate_logits
    from cpfd.runs import RunFolder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=sorted(BUILDERS), help="a table of bench/tabular.py (written if missing)")
    parser.add_argument("--against", required=True, help="git revision whose temperature rule to compare with")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.5, help="teacher.calibration_share of the runs")
    args = parser.parse_args()
    then = calibration_module(args.against)
    folder = BUILDERS[args.table]()
    data = load_dataset(folder)
    print(f"| task | seed | test ECE, uncalibrated | {args.against}: T fitted, kept, test ECE | now: T fitted, kept, test ECE |")
    print("|---|---|---|---|---|")
    for seed in range(args.seeds):
        run = OUT / "teacher_calibration" / args.table / f"seed_{seed}"
        if not (run / "metrics.json").exists():
            run_cpfd(["fit-teacher", str(folder), "--out", str(run), "--force"],
                     [f"train.seed={seed}", "train.progress=false", "teacher.fit_reference=false",
                      f"teacher.calibration_share={args.share}"])
        logits = load_targets(RunFolder(run).teacher_outputs).logits
        calib = data.calibration_rows(args.share)
        for task in data.tasks:
            rows = np.flatnonzero(calib & data.label_mask[task.name].numpy())
            folds = (data.id_fraction(rows) / args.share * 2).astype(int).clip(0, 1)  # as calibrated_targets
            cells = []
            for module in (then, calibration):
                choice = module.choose_temperature(logits[task.name][rows], data.labels[task.name][rows], task.kind,
                                                   folds)
                ece = evaluate_logits(data, logits, temperatures={task.name: choice["temperature"]})
                cells.append(f"{choice['fitted']:.3f}, {'yes' if choice['kept'] else 'no'}, "
                             f"{ece['tasks'][task.name]['ece']:.4f}")
            before = evaluate_logits(data, logits)["tasks"][task.name]["ece"]
            print(f"| {task.name} | {seed} | {before:.4f} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
