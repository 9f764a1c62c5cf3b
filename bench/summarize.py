"""Markdown tables for bench/RESULTS.md from `cpfd compare` folders (results.json), paired over seeds.

    python bench/summarize.py bench/out/headroom_stale_lam08/compare_drifted
    python bench/summarize.py FOLDER --against bench/out/headroom_stale/compare_drifted:pfd --split val

Columns: test mean F1 (mean ± std over seeds), the paired difference vs PFD of the same folder (mean ± s.e.,
verdict at 2 s.e.), vs an arm of another compare folder run on the same data and seeds (``--against``, e.g. PFD
at another λ), the worst scenario's F1, the share of KD weight mass on teacher-wrong rows, and the share of the
oracle gate's margin over PFD an arm recovers (when the oracle beats PFD by ≥ 2 s.e.).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cpfd.compare import paired_difference


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    d = paired_difference(a, b)
    return d["mean"], d["se"]


def fmt(a: list[float], b: list[float]) -> str:
    d = paired_difference(a, b)
    if d["n"] < 2:
        return f"{d['mean']:+.4f} (one seed)"
    return f"{d['mean']:+.4f} ± {d['se']:.4f} ({d['verdict']})"


def scores(results: dict, arm: str, split: str) -> list[float]:
    per_seed = results["per_seed"][arm]
    return [per_seed[s][split]["mean_f1"] for s in sorted(per_seed, key=int)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--against", help="FOLDER:ARM of another compare on the same data and seeds")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    args = parser.parse_args()
    results = json.loads((args.folder / "results.json").read_text())
    other = None
    if args.against:
        folder, _, arm = args.against.rpartition(":")
        other = (arm, scores(json.loads((Path(folder) / "results.json").read_text()), arm, args.split))
    arms = results["arms"]
    pfd = scores(results, "pfd", args.split)
    oracle_margin = None
    if "oracle_gate" in arms:
        m, se = paired(scores(results, "oracle_gate", args.split), pfd)
        oracle_margin = m if m >= 2 * se else None
    head = ["arm", f"{args.split} mean F1 (± std)", "vs PFD (paired ± s.e.)"]
    if other:
        head.append(f"vs {other[0]} of {Path(args.against.rpartition(':')[0]).parent.name}")
    head += ["worst scenario F1", "KD mass on teacher-wrong rows", "share of oracle margin"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for arm, e in arms.items():
        if any(args.split not in m for m in results["per_seed"][arm].values()):
            continue  # e.g. a teacher given as a file has test metrics only
        values = scores(results, arm, args.split)
        row = [arm, f"{np.mean(values):.4f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}",
               "" if arm == "pfd" else fmt(values, pfd)]
        if other:
            row.append(fmt(values, other[1]))
        worst = e.get("worst_group_f1", {}).get("mean") if args.split == "test" else None
        row.append("" if worst is None else f"{worst:.4f}")
        mass = [w.get("kd_mass_teacher_wrong") for w in e.get("weights", {}).values()]
        row.append(f"{np.mean(mass):.3f}" if mass and None not in mass else "")
        share = ""
        if oracle_margin and arm not in ("pfd", "oracle_gate", "baseline", "teacher") and not arm.startswith("logreg"):
            share = f"{paired(values, pfd)[0] / oracle_margin:.0%}"
        row.append(share)
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
