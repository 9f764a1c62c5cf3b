"""The demo's scenarios as a headroom benchmark (issue 9): stale history concentrated in two categories, a teacher
that learnt on fresh history, the oracle-gate ceiling, and the in-distribution control.

``cpfd.demo.generate`` writes the same video dataset as ``make demo`` (its docstring has the design), with its
``drift=True`` data (stale history in current rows) and ``drift=False`` control (accurate history everywhere);
each is compared with the demo's settings, ``--oracle-labels`` pointing at the generator's hidden labels of the
unlabelled rows.

    python bench/demo_headroom.py --labelled 300 --unlabelled 300 --seeds 3          # the demo's size
    python bench/demo_headroom.py --labelled 900 --unlabelled 900 --seeds 5          # reported in RESULTS.md

Outputs: ``bench/out/demo_headroom<tag>/{drifted,control}/`` (data and compare folders) and ``summary.json``;
``python bench/summarize.py bench/out/demo_headroom<tag>/drifted/compare`` prints the paired tables.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import run_cpfd  # noqa: E402

from cpfd.demo import DEMO_SETTINGS, generate  # noqa: E402

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, default=300)
    parser.add_argument("--unlabelled", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", choices=["drifted", "control"], help="run one of the two datasets")
    parser.add_argument("--extra", default="", help="extra `cpfd compare` flags, one quoted string")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override for every run")
    parser.add_argument("--tag", default="", help="suffix of the output folder bench/out/demo_headroom<tag>")
    args = parser.parse_args()
    base = OUT / f"demo_headroom{args.tag}"
    summary_path = base / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name, drift in (("drifted", True), ("control", False)):
        if args.only not in (None, name):
            continue
        data = base / name / "data"
        if not (data / "dataset.yaml").exists():
            print(f"generating {args.labelled + args.unlabelled} clips ({name}) in {data}", flush=True)
            generate(data, n_labelled=args.labelled, n_unlabelled=args.unlabelled, drift=drift)
        out = base / name / "compare"
        run_cpfd(["compare", str(data), "--out", str(out), "--seeds", str(args.seeds), "--oracle-labels",
                  str(data / "hidden_labels.parquet"), *shlex.split(args.extra)], DEMO_SETTINGS + args.sets)
        results = json.loads((out / "results.json").read_text())
        summary[name] = {arm: {"mean_f1": e["mean_f1"]["mean"], "vs_pfd": e.get("vs_pfd"),
                               "worst_group_f1": e.get("worst_group_f1", {}).get("mean")}
                         for arm, e in results["arms"].items()}
        base.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
