"""The demo's scenarios as a headroom benchmark (issue 9): stale history concentrated in two categories, a teacher
that learnt on fresh history, the oracle-gate ceiling, and the in-distribution control.

``cpfd.demo.generate`` writes the same video dataset as ``make demo`` (its docstring has the design), with its
``drift=True`` data (stale history in current rows) and ``drift=False`` control (accurate history everywhere);
each is compared with the demo's settings, ``--oracle-labels`` pointing at the generator's hidden labels of the
unlabelled rows.

Two teachers:
- ``--teacher current`` (default): `cpfd compare` fits the teacher per seed on each dataset, so the drifted
  teacher is early-stopped and calibrated on current validation rows, whose history is already stale.
- ``--teacher history``: one teacher is fitted on the control data (the same clips and splits with the history as
  it was when the teacher was trained: fresh everywhere, validation included) and its logits on each dataset are
  given to `cpfd compare` as ``teacher.kind=file``, as a production teacher trained on last quarter's logs (the
  design of ``bench/stale_history.py``). Only its calibration sees current rows.

    python bench/demo_headroom.py --labelled 600 --unlabelled 300 --seeds 3          # the demo's size
    python bench/demo_headroom.py --labelled 900 --unlabelled 2400 --seeds 5          # λ = 0.8, the default since
    python bench/demo_headroom.py --labelled 900 --unlabelled 2400 --teacher history  # the fifteenth session

The labelled clips are split like the demo's (``DEMO_SHARES``, 30/35/35) unless ``--shares`` says otherwise.
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

from cpfd.demo import DEMO_SETTINGS, DEMO_SHARES, generate  # noqa: E402

OUT = Path(__file__).parent / "out"


def history_teacher(history: Path, current: dict[str, Path], out: Path, sets: list[str]) -> dict[str, Path]:
    """Fit the teacher on the history data once; write its uncalibrated logits on each current dataset."""
    from cpfd.config import load_config
    from cpfd.data.prepared import load_dataset
    from cpfd.runs import RunFolder
    from cpfd.train.teacher_outputs import export_outputs

    run = out / "history_teacher"
    if not (run / "metrics.json").exists():
        run_cpfd(["fit-teacher", str(history), "--out", str(run), "--force"], sets)
    extract = load_config(None, sets).extract
    return {name: export_outputs(RunFolder(run), load_dataset(folder, extract=extract),
                                 folder.parent / "teacher_logits.parquet")
            for name, folder in current.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, default=300)
    parser.add_argument("--unlabelled", type=int, default=300)
    parser.add_argument("--shares", type=float, nargs=3, default=DEMO_SHARES, metavar=("TRAIN", "VAL", "TEST"),
                        help="split of the labelled clips (default: the demo's)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--teacher", choices=["current", "history"], default="current",
                        help="fit the teacher per seed on each dataset, or once on the history (control) data")
    parser.add_argument("--only", choices=["drifted", "control"], help="run one of the two datasets")
    parser.add_argument("--extra", default="", help="extra `cpfd compare` flags, one quoted string")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override for every run")
    parser.add_argument("--tag", default="", help="suffix of the output folder bench/out/demo_headroom<tag>")
    args = parser.parse_args()
    base = OUT / f"demo_headroom{args.tag}"
    sets = [*DEMO_SETTINGS, "train.min_steps=300", *args.sets]  # the minimum the recorded runs used
    datasets = {}
    for name, drift in (("drifted", True), ("control", False)):
        data = base / name / "data"
        if not (data / "dataset.yaml").exists():
            print(f"generating {args.labelled + args.unlabelled} clips ({name}) in {data}", flush=True)
            generate(data, n_labelled=args.labelled, n_unlabelled=args.unlabelled, drift=drift,
                     shares=tuple(args.shares))
        datasets[name] = data
    chosen = {k: v for k, v in datasets.items() if args.only in (None, k)}
    teacher_sets = {name: [] for name in chosen}
    if args.teacher == "history":
        files = history_teacher(datasets["control"], chosen, base, sets)
        teacher_sets = {name: ["teacher.kind=file", f"teacher.outputs_file={files[name]}"] for name in chosen}
    summary_path = base / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name, data in chosen.items():
        out = base / name / "compare"
        run_cpfd(["compare", str(data), "--out", str(out), "--seeds", str(args.seeds), "--oracle-labels",
                  str(data / "hidden_labels.parquet"), *shlex.split(args.extra)], sets + teacher_sets[name])
        results = json.loads((out / "results.json").read_text())
        summary[name] = {arm: {"mean_f1": e["mean_f1"]["mean"], "vs_pfd": e.get("vs_pfd"),
                               "worst_group_f1": e.get("worst_group_f1", {}).get("mean")}
                         for arm, e in results["arms"].items()}
        summary_path.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
