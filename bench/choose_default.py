"""Choose the default distillation recipe on *validation* splits across benchmarks, then report its *test* numbers.

Protocol (fixed before looking at test numbers): every candidate arm is compared with PFD by the paired-seed
difference of **validation** mean F1 on each benchmark. A candidate is admissible when it is nowhere below PFD by
more than one paired standard error on validation; among admissible candidates the default is the one with the
largest mean validation gain over PFD across benchmarks (PFD itself is a candidate with gain 0; ties go to the
earlier name). Test numbers of every arm are printed afterwards and were not used to choose. Compare folders run
with ``--lams`` carry PFD and the configured CPFD at other λ (``pfd_lam0.8``, ``cpfd_lam0.8``), so λ is chosen
by the same rule.

Benchmarks come as compare folders (their ``results.json``) and, with ``--prior``, as a JSON file of paired
differences recorded by earlier runs whose folders are gone: ``{"bench": {"arm": {"val": [mean, se], "test":
[mean, se]}}}`` (``bench/results/choose_default_prior.json`` holds the three benchmarks of the first protocol run).

    python bench/choose_default.py bench/out/learnable_privileged/compare bench/out/fmnist_1000/compare \\
        --prior bench/results/choose_default_prior.json --json bench/results/choose_default.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

NOT_CANDIDATES = {"baseline", "teacher", "self_distill", "oracle_gate", "logreg_student", "logreg_privileged",
                  "pfd_labelled", "cpfd_labelled"}


def paired(results: dict, arm: str, split: str) -> list[float]:
    """[mean, s.e.] over seeds of the arm's mean F1 minus PFD's on ``split``."""
    seeds = sorted(results["per_seed"]["pfd"])
    d = np.array([results["per_seed"][arm][s][split]["mean_f1"] - results["per_seed"]["pfd"][s][split]["mean_f1"]
                  for s in seeds])
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return [float(d.mean()), se]


def from_folder(folder: Path) -> dict:
    results = json.loads((folder / "results.json").read_text())
    return {arm: {split: paired(results, arm, split) for split in ("val", "test")}
            for arm in results["per_seed"] if arm == "oracle_gate" or arm not in NOT_CANDIDATES | {"pfd"}}


def choose(benches: dict[str, dict]) -> tuple[str, dict]:
    """The chosen arm and, per candidate, (mean validation gain, admissible)."""
    arms = sorted({a for b in benches.values() for a in b} - NOT_CANDIDATES | {"pfd"})
    scores = {}
    for arm in arms:
        gains = [(0.0, 0.0) if arm == "pfd" else tuple(b[arm]["val"]) for b in benches.values()
                 if arm == "pfd" or arm in b]
        admissible = len(gains) == len(benches) and all(not (m < -se) for m, se in gains)
        scores[arm] = (float(np.mean([m for m, _ in gains])) if gains else float("nan"), admissible)
    chosen = max((a for a, (_, ok) in scores.items() if ok), key=lambda a: scores[a][0], default="pfd")
    return chosen, scores


def cell(bench: dict, arm: str, split: str) -> str:
    if arm == "pfd":
        return "0"
    if arm not in bench:
        return "—"
    mean, se = bench[arm][split]
    return f"{mean:+.4f} ± {se:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="compare folders (each with results.json)")
    parser.add_argument("--prior", type=Path, help="JSON of paired differences from earlier runs (see above)")
    parser.add_argument("--json", type=Path, help="also write the tables and the choice here")
    args = parser.parse_args()
    benches = json.loads(args.prior.read_text()) if args.prior else {}
    benches |= {f"{f.parent.name}/{f.name}": from_folder(f) for f in args.folders}
    if not benches:
        parser.error("no benchmarks: give compare folders and/or --prior")
    chosen, scores = choose(benches)
    head = "| arm | " + " | ".join(benches) + " |"
    rule = "|---" * (len(benches) + 1) + "|"
    print("## Validation: paired difference vs PFD (mean ± s.e.), used to choose\n")
    print(head[:-1] + "| mean | admissible |\n" + rule + "---|---|")
    for arm, (mean, ok) in scores.items():
        print(f"| {arm} | " + " | ".join(cell(b, arm, "val") for b in benches.values())
              + f" | {mean:+.4f} | {'yes' if ok else 'no'} |")
    print(f"\nChosen on validation: **{chosen}**\n")
    print("## Test: paired difference vs PFD (mean ± s.e.), reported, not used to choose\n")
    print(head + "\n" + rule)
    for arm in [*scores, "oracle_gate"]:
        if arm == "oracle_gate" and not any(arm in b for b in benches.values()):
            continue
        name = f"**{arm}**" if arm == chosen else arm
        print(f"| {name} | " + " | ".join(cell(b, arm, "test") for b in benches.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps({"chosen": chosen, "scores": scores, "benchmarks": benches}, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
