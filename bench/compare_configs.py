"""Two configurations of the same benchmarks, paired by seed: is a candidate default better than the current one?

Each pair is ``NEW_FOLDER:OLD_FOLDER`` — two ``cpfd compare`` folders run on the same data and seeds, one per
configuration. For every arm the paired difference new − old of mean F1 (mean ± s.e. over seeds) is printed on
validation and on test, and each folder's distance to its logistic-regression references (teacher −
``logreg_privileged``, baseline − ``logreg_student``, paired over seeds).

Decision rule, fixed before the runs, on **validation only**: the candidate replaces the default when, for the arms
``baseline``, ``teacher``, ``pfd`` and ``cpfd`` on every benchmark, new − old is not below −1 paired s.e., and the
mean of those differences over arms and benchmarks is > 0. Test numbers are printed afterwards and do not enter.

    python bench/compare_configs.py \\
        bench/out/tabular/breast_cancer/compare_lrstart:bench/out/tabular/breast_cancer/compare_default ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DECIDING_ARMS = ("baseline", "teacher", "pfd", "cpfd")
REFERENCES = {"teacher": "logreg_privileged", "baseline": "logreg_student"}


def per_seed(results: dict, arm: str, split: str) -> dict[str, float]:
    """Per seed, the arm's mean F1 on ``split``; a teacher run before its report had a ``val`` entry falls back to
    the validation F1 of its training loop's selection rows."""
    out = {}
    for seed, v in results["per_seed"].get(arm, {}).items():
        if split in v:
            out[seed] = v[split]["mean_f1"]
        elif split == "val" and "best_val_f1" in v:
            out[seed] = v["best_val_f1"]
    return out


def paired(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, int]:
    seeds = sorted(set(a) & set(b), key=int)
    d = np.array([a[s] - b[s] for s in seeds])
    if not len(d):
        return float("nan"), float("nan"), 0
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(d.mean()), se, len(d)


def cell(m: float, se: float) -> str:
    verdict = "no difference" if m == 0 or not abs(m) >= 2 * se else ("better" if m > 0 else "worse")
    return f"{m:+.4f} ± {se:.4f} ({verdict})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", help="NEW_FOLDER:OLD_FOLDER")
    parser.add_argument("--json", type=Path, help="also write every number and the decision here")
    args = parser.parse_args()
    out: dict = {"benchmarks": {}}
    deciding: list[tuple[float, float]] = []
    for pair in args.pairs:
        new_dir, old_dir = (Path(p) for p in pair.split(":"))
        new, old = (json.loads((d / "results.json").read_text()) for d in (new_dir, old_dir))
        name = new_dir.parent.name
        rows = {}
        for arm in [a for a in new["per_seed"] if a in old["per_seed"]]:
            rows[arm] = {split: paired(per_seed(new, arm, split), per_seed(old, arm, split)) for split in ("val", "test")}
            if arm in DECIDING_ARMS and rows[arm]["val"][2]:
                deciding.append(rows[arm]["val"][:2])
        refs = {}
        for label, results in (("new", new), ("old", old)):
            for arm, ref in REFERENCES.items():
                if ref in results["per_seed"]:
                    refs[f"{label} {arm} − {ref}"] = paired(per_seed(results, arm, "test"), per_seed(results, ref, "test"))
        out["benchmarks"][name] = {"arms": rows, "references_test": refs}
        print(f"\n### {name}: new − old, paired over seeds\n")
        print("| arm | validation | test |\n|---|---|---|")
        for arm, r in rows.items():
            print(f"| {arm} | {cell(*r['val'][:2])} | {cell(*r['test'][:2])} |")
        print("\n| test, against the references | paired difference |\n|---|---|")
        for label, r in refs.items():
            print(f"| {label} | {cell(*r[:2])} |")
    admissible = all(not (m < -se) for m, se in deciding)
    gain = float(np.mean([m for m, _ in deciding])) if deciding else float("nan")
    adopt = admissible and gain > 0
    out["decision"] = {"admissible": admissible, "mean_validation_gain": gain, "adopt": adopt}
    print(f"\nDecision (validation, arms {', '.join(DECIDING_ARMS)}): nowhere below −1 s.e.: {admissible}; "
          f"mean gain {gain:+.4f}; {'adopt the candidate' if adopt else 'keep the default'}.")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
