"""Choose the default distillation recipe on *validation* splits across benchmarks, then report its *test* numbers.

Protocol (fixed before looking at test numbers): every candidate arm is compared with PFD by the paired-seed
difference of **validation** mean F1 on each benchmark. A candidate is admissible when it is nowhere below PFD by
more than one paired standard error on validation; among admissible candidates the default is the one with the
largest mean validation gain over PFD across benchmarks (PFD itself is a candidate with gain 0). Test numbers
of the chosen arm are printed afterwards, beside every other arm, and were not used to choose.

    python bench/choose_default.py bench/out/headroom_stale/compare_drifted bench/out/headroom_stale/compare_control ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

NOT_CANDIDATES = {"baseline", "teacher", "self_distill", "oracle_gate", "logreg_student", "logreg_privileged"}


def paired(results: dict, arm: str, split: str) -> tuple[float, float, int]:
    seeds = sorted(results["per_seed"]["pfd"])
    d = np.array([results["per_seed"][arm][s][split]["mean_f1"] - results["per_seed"]["pfd"][s][split]["mean_f1"]
                  for s in seeds])
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(d.mean()), se, len(d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="compare folders (each with results.json)")
    args = parser.parse_args()
    benches = {str(f): json.loads((f / "results.json").read_text()) for f in args.folders}
    arms = sorted({a for r in benches.values() for a in r["arms"]} - NOT_CANDIDATES)
    print("## Validation: paired difference vs PFD (mean ± s.e.), used to choose\n")
    print("| arm | " + " | ".join(Path(b).parent.name + "/" + Path(b).name for b in benches) + " | mean | admissible |")
    print("|---" * (len(benches) + 3) + "|")
    scores = {}
    for arm in arms:
        cells, gains, admissible = [], [], True
        for results in benches.values():
            if arm not in results["per_seed"]:
                cells.append("—")
                continue
            mean, se, _ = paired(results, arm, "val") if arm != "pfd" else (0.0, 0.0, 0)
            cells.append(f"{mean:+.4f} ± {se:.4f}")
            gains.append(mean)
            admissible &= not (mean < -se)
        complete = len(gains) == len(benches)
        scores[arm] = (float(np.mean(gains)) if gains else float("nan"), admissible and complete)
        print(f"| {arm} | " + " | ".join(cells) + f" | {scores[arm][0]:+.4f} | {'yes' if scores[arm][1] else 'no'} |")
    chosen = max((a for a, (_, ok) in scores.items() if ok), key=lambda a: scores[a][0], default="pfd")
    print(f"\nChosen on validation: **{chosen}**\n")
    print("## Test: paired difference vs PFD (mean ± s.e.), reported, not used to choose\n")
    print("| arm | " + " | ".join(Path(b).parent.name + "/" + Path(b).name for b in benches) + " |")
    print("|---" * (len(benches) + 1) + "|")
    for arm in arms + ["oracle_gate"]:
        cells = []
        for results in benches.values():
            if arm not in results["per_seed"] or arm == "pfd":
                cells.append("—")
                continue
            mean, se, _ = paired(results, arm, "test")
            cells.append(f"{mean:+.4f} ± {se:.4f}")
        print(f"| {'**' + arm + '**' if arm == chosen else arm} | " + " | ".join(cells) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
