"""Add validation scores to the teachers of compare folders made before teacher reports had them.

Since the twelfth session a teacher's ``metrics.json`` carries ``val``: its F1 on the validation split, scored from
its cached logits exactly like a student's (``teacher_report``). Older folders only had the training loop's
``best_val_f1``, which an ``auto`` teacher that kept the regression does not have, so ``bench/compare_configs.py``
could not pair teachers on validation. This adds the missing ``val`` entry from the same cached logits (nothing is
retrained) and rebuilds each folder's ``results.json`` and report.

    python bench/teacher_validation.py bench/out/fmnist_1000/compare bench/out/fmnist_1000/compare_auto
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import run_cpfd  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="cpfd compare folders")
    args = parser.parse_args()
    from cpfd.cli import BadMedia, _load
    from cpfd.evaluate.evaluation import evaluate_logits
    from cpfd.io import atomic_write_json
    from cpfd.runs import CompareFolder, RunFolder
    from cpfd.train.teacher_outputs import teacher_targets

    for path in args.folders:
        folder = CompareFolder(path)
        first = folder.teacher(folder.seeds()[0], "privileged")
        data = _load(Path(first.info["dataset"]), BadMedia.fail, first.config)
        added = 0
        for run_dir in sorted(path.glob("seed_*/teacher_*")):
            run = RunFolder(run_dir)
            metrics = json.loads(run.metrics_file.read_text())
            if "val" not in metrics:
                metrics["val"] = evaluate_logits(data, teacher_targets(run, data, log=lambda *_: None).logits, "val")
                atomic_write_json(run.metrics_file, metrics)
                added += 1
        print(f"{path}: validation scores added to {added} teacher run(s)", flush=True)
        run_cpfd(["report", str(path)], [])


if __name__ == "__main__":
    main()
