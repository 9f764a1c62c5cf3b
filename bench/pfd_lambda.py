"""PFD at other λ (or any run config) on a compare folder's data and teachers, paired by seed with its arms.

A weighting arm that beats PFD at the same λ may only be doing what a smaller λ does (down-weighting the
distillation term everywhere). This runs ``cpfd distill --method pfd --lam L`` for each seed of a compare folder,
from that seed's own privileged teacher, with that compare's resolved config otherwise, and writes
``<folder>/pfd_lam<L>/results.json`` (``per_seed`` only) for ``bench/summarize.py --against``.

    python bench/pfd_lambda.py bench/out/headroom_stale_lam08/compare_drifted --lam 0.5
    python bench/pfd_lambda.py FOLDER --config runs/tune/best.yaml --name tuned   # a tuned recipe, every seed

With ``--config`` the recipe is that file's (its own ``train.seed`` replaced by each seed of the folder), and the
folder's no-privileged teacher of the same seed is passed as ``--reference``.
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
    parser.add_argument("folder", type=Path, help="a compare folder")
    parser.add_argument("--lam", type=float, help="PFD at this λ")
    parser.add_argument("--config", type=Path, help="or: distil with this run config (e.g. a tune's best.yaml)")
    parser.add_argument("--name", help="output folder name (default pfd_lam<L>)")
    args = parser.parse_args()
    if (args.lam is None) == (args.config is None):
        parser.error("give --lam or --config")
    results = json.loads((args.folder / "results.json").read_text())
    dataset = results["dataset_path"]
    out = args.folder / (args.name or f"pfd_lam{args.lam:g}")
    per_seed = {}
    for seed in sorted(results["per_seed"]["pfd"], key=int):
        arm = args.folder / f"seed_{seed}" / "pfd"
        run = out / f"seed_{seed}"
        teacher = args.folder / f"seed_{seed}" / "teacher_privileged"
        if not (run / "metrics.json").exists() and args.config is None:
            run_cpfd(["distill", dataset, "--teacher", str(teacher), "--config", str(arm / "config.yaml"), "--out",
                      str(run), "--method", "pfd", "--lam", str(args.lam), "--force"], ["train.progress=false"])
        elif not (run / "metrics.json").exists():
            run_cpfd(["distill", dataset, "--teacher", str(teacher), "--reference",
                      str(args.folder / f"seed_{seed}" / "teacher_self"), "--config", str(args.config), "--seed",
                      str(seed), "--out", str(run), "--force"], ["train.progress=false"])
        metrics = json.loads((run / "metrics.json").read_text())
        per_seed[seed] = {"test": metrics["test"], "val": metrics["val"]}
    (out / "results.json").write_text(json.dumps({"per_seed": {"pfd" if args.config is None else "tuned": per_seed}},
                                                 indent=1))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
