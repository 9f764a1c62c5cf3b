"""The teacher's temperature rule on the same logits, this checkout's against an earlier revision's (issue 8: test
ECE after calibration must not exceed before). Fits one teacher per seed (or reuses the run folders), then
applies ``choose_temperature`` from both revisions to its cached logits; the teacher itself does not change.

    python bench/teacher_calibration.py breast_cancer --against 351d641~1 --seeds 5   # a table of bench/tabular.py
    python bench/teacher_calibration.py digits --against HEAD~1 --splits 5 --tag _resplit
        # the teachers of `bench/tabular.py --splits 5 --tag _resplit` (split k, seed k), not refitted
    python bench/teacher_calibration.py runs --against HEAD~1 --runs bench/out/headroom_rare/compare_drifted/seed_*/teacher_privileged
        # any teacher run folders, each on the dataset it was fitted for
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
    parser.add_argument("table", choices=[*sorted(BUILDERS), "runs"],
                        help="a table of bench/tabular.py (written if missing), or `runs` with --runs")
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="teacher run folders (with `runs`)")
    parser.add_argument("--against", required=True, help="git revision whose temperature rule to compare with")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.5, help="teacher.calibration_share of the runs")
    parser.add_argument("--splits", type=int, default=0, help="N > 0: the resampled splits of bench/tabular.py")
    parser.add_argument("--tag", default="_resplit", help="with --splits: the tag of that tabular.py run")
    args = parser.parse_args()
    then = calibration_module(args.against)
    print(f"| task | seed | test ECE, uncalibrated | {args.against}: T fitted, kept, test ECE | now: T fitted, kept, test ECE |")
    print("|---|---|---|---|---|")
    eces = []  # (before, then, now) per task and seed
    for seed in range(len(args.runs) if args.table == "runs" else args.splits or args.seeds):
        if args.table == "runs":
            run = args.runs[seed]
            cfg = RunFolder(run).config
            data = load_dataset(RunFolder(run).info["dataset"], extract=cfg.extract, log=lambda _m: None)
            args.share = cfg.teacher.calibration_share
        elif args.splits:
            data = load_dataset(OUT / "tabular" / args.table / f"data_split{seed}", log=lambda _m: None)
            run = OUT / "tabular" / args.table / f"compare{args.tag}_split{seed}" / f"seed_{seed}" / "teacher_privileged"
        else:
            folder = BUILDERS[args.table]()
            data = load_dataset(folder, log=lambda _m: None)
            run = OUT / "teacher_calibration" / args.table / f"seed_{seed}"
        if args.table != "runs" and not args.splits and not (run / "metrics.json").exists():
            run_cpfd(["fit-teacher", str(folder), "--out", str(run), "--force"],
                     [f"train.seed={seed}", "train.progress=false", "teacher.fit_reference=false",
                      f"teacher.calibration_share={args.share}"])
        logits = load_targets(RunFolder(run).teacher_outputs).logits
        calib = data.calibration_rows(args.share)
        for task in data.tasks:
            rows = np.flatnonzero(calib & data.label_mask[task.name].numpy())
            folds = (data.id_fraction(rows) / args.share * 2).astype(int).clip(0, 1)  # as calibrated_targets
            cells, after = [], []
            for module in (then, calibration):
                choice = module.choose_temperature(logits[task.name][rows], data.labels[task.name][rows], task.kind,
                                                   folds)
                ece = evaluate_logits(data, logits, temperatures={task.name: choice["temperature"]})
                after.append(ece["tasks"][task.name]["ece"])
                cells.append(f"{choice['fitted']:.3f}, {'yes' if choice['kept'] else 'no'}, "
                             f"{ece['tasks'][task.name]['ece']:.4f}")
            before = evaluate_logits(data, logits)["tasks"][task.name]["ece"]
            label = "/".join(Path(run).parts[-5:-1]) if args.table == "runs" else seed
            print(f"| {task.name} | {label} | {before:.4f} | {cells[0]} | {cells[1]} |", flush=True)
            eces.append((before, *after))
    before, then_ece, now_ece = np.array(eces).T
    print(f"| mean | | {before.mean():.4f} | {then_ece.mean():.4f} (after > before on {(then_ece > before).sum()}) | "
          f"{now_ece.mean():.4f} (after > before on {(now_ece > before).sum()}) |")


if __name__ == "__main__":
    main()
