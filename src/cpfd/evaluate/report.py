"""The compare report: a rich table for the terminal and ``report.md`` with the plots beside it.

Every comparison is shown as a paired-seed difference with its standard error; the words "better", "worse" and
"no difference" come from :func:`cpfd.compare.paired_difference` (≥ 2 s.e., ≥ 3 seeds), never from the means.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from cpfd.io import atomic_write_text

CORE_ARMS = ("baseline", "teacher")


def _distilled(arm: str) -> bool:
    """Arms that gap closed describes: not the two ends of the gap, not the logistic-regression references."""
    return arm not in CORE_ARMS and not arm.startswith("logreg_")


def _pm(stats: dict) -> str:
    return "n/a" if stats["mean"] != stats["mean"] else f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def _pm_short(stats: dict) -> str:
    return "n/a" if stats["mean"] != stats["mean"] else f"{stats['mean']:.3f} ±{stats['std']:.3f}"


def _gap(value) -> str:
    return "undefined" if value is None else f"{100 * value:+.1f} %"


def _diff(d: dict | None, short: bool = False) -> str:
    if not d or d["mean"] != d["mean"]:
        return ""
    se = "n/a" if d["se"] != d["se"] else f"{d['se']:.3f}" if short else f"{d['se']:.4f}"
    value = f"{d['mean']:+.3f}" if short else f"{d['mean']:+.4f}"
    return f"{value} ±{se} ({d['verdict']})" if not short else f"{value} ±{se}"


def f1_columns(results: dict) -> list[tuple[str, str | None]]:
    """(header, task) per F1 column; task None is the mean over tasks, shown only where there is more than one."""
    tasks = results["tasks"]
    if len(tasks) == 1:
        return [(f"{tasks[0]} F1", None)]
    return [(t, t) for t in tasks] + [("mean F1", None)]


def _f1_stats(entry: dict, task: str | None) -> dict:
    return entry["mean_f1"] if task is None else entry["f1"][task]


def rich_table(results: dict) -> Table:
    seeds = results.get("options", {}).get("seeds", "?")
    table = Table(title=f"cpfd compare — {results['dataset']} (test F1, mean ± std over {seeds} seeds)")
    table.add_column("arm", style="bold", no_wrap=True)
    columns = f1_columns(results)
    for header, _ in columns:
        table.add_column(header, justify="right")
    table.add_column("vs PFD (paired ± s.e.)", justify="right")
    table.add_column("gap closed", justify="right")
    for arm, entry in results["arms"].items():
        table.add_row(arm, *[_pm_short(_f1_stats(entry, t)) for _, t in columns],
                      _diff(entry.get("vs_pfd"), short=True) if arm != "pfd" else "",
                      _gap(entry["gap_closed"]["mean_f1"]) if _distilled(arm) else "")
    return table


def _gap_note(results: dict) -> str:
    gap = results["teacher_vs_baseline"]
    if gap["verdict"] == "better":
        return ""
    if gap["verdict"] == "not enough seeds":
        return (f"Gap closed is undefined: with {gap['n']} seed(s) the teacher–baseline gap cannot be told from "
                "noise (run ≥ 3 seeds).")
    return (f"Gap closed is undefined (teacher–baseline gap within noise: {gap['mean']:+.4f} ± {gap['se']:.4f} "
            "paired s.e.).")


def _verdict_line(title: str, diff: dict, words: dict[str, str], note: str = "") -> str:
    return (f"**{title}:**{note} mean F1 difference {diff['mean']:+.4f} ± {diff['se']:.4f} (paired s.e., "
            f"{diff['n']} seeds) — {words[diff['verdict']]}.")


def verdict_lines(results: dict) -> list[str]:
    """The report's sentences: each backed by a paired difference and its standard error."""
    lines = []
    cpfd = results["arms"].get("cpfd", {}).get("vs_pfd")
    if cpfd:
        lines.append(_verdict_line("CPFD vs PFD", cpfd, {
            "better": "CPFD beats PFD on this dataset", "worse": "CPFD is worse than PFD on this dataset",
            "no difference": "no difference between CPFD and PFD on this dataset (within 2 paired s.e.)",
            "not enough seeds": "not enough seeds to compare CPFD with PFD (needs ≥ 3)"}))
    oracle = results["arms"].get("oracle_gate", {}).get("vs_pfd")
    if oracle:
        lines.append(_verdict_line("Oracle gate vs PFD", oracle, {
            "better": "the data has headroom for weighting", "worse": "dropping the teacher's mistakes hurts here",
            "no difference": "no weighting can beat PFD here by more than the noise",
            "not enough seeds": "not enough seeds to tell"}, note=" (ceiling of any weighting, uses hidden labels)"))
        recovered = {a: e["oracle_margin_recovered"] for a, e in results["arms"].items()
                     if e.get("oracle_margin_recovered") is not None}
        if recovered:
            lines.append("Share of the oracle's margin over PFD recovered: "
                         + ", ".join(f"{a} {r:.0%}" for a, r in recovered.items()) + ".")
    for arm in CORE_ARMS:
        ref = results["arms"][arm].get("vs_reference")
        if ref and (ref["verdict"] == "worse" or (ref["verdict"] == "not enough seeds" and ref["mean"] < 0)):
            sure = "" if ref["verdict"] == "worse" else " (too few seeds to tell from noise)"
            lines.append(f"**Warning: the {arm} is below its simple reference** ({ref['reference']}): "
                         f"{ref['mean']:+.4f} ± {ref['se']:.4f} (paired s.e.){sure}.")
    below = [a for a, e in results["arms"].items() if _distilled(a) and e["vs_baseline"]["verdict"] == "worse"]
    if below:
        lines.append(f"**Below the baseline** (≥ 2 paired s.e.): {', '.join(below)}.")
    worse_ece = [t for t, c in results["teacher_calibration"].items() if c["test_ece_after"] > c["test_ece_before"]]
    if worse_ece:
        lines.append(f"**Calibration worsened test ECE** for {', '.join(worse_ece)} (seed means).")
    note = _gap_note(results)
    if note:
        lines.append(note)
    return lines


def markdown_report(results: dict, path: Path, plots: dict[str, Path]) -> Path:
    columns = f1_columns(results)
    seeds = results.get("options", {}).get("seeds", "?")
    lines = [f"# cpfd compare: {results['dataset']}", "",
             f"Test F1, mean ± std over {seeds} seeds, identical budgets per arm. Binary: F1 at the validation-tuned "
             "threshold; multiclass: macro-F1; multilabel: macro-F1 with per-label validation thresholds. "
             "Differences are paired over seeds (mean ± standard error); a verdict needs ≥ 2 s.e. and ≥ 3 seeds. "
             "Gap closed = (F1_arm − F1_baseline) / (F1_teacher − F1_baseline) on the seed means, defined only "
             "when the teacher beats the baseline by ≥ 2 paired s.e.", "",
             "| arm | " + " | ".join(h for h, _ in columns) + " | vs baseline | vs PFD | gap closed |",
             "|---" * (len(columns) + 4) + "|"]
    for arm, e in results["arms"].items():
        lines.append(f"| {arm} | " + " | ".join(_pm(_f1_stats(e, t)) for _, t in columns) + " | "
                     f"{_diff(e['vs_baseline']) if arm != 'baseline' else ''} | "
                     f"{_diff(e.get('vs_pfd')) if arm != 'pfd' else ''} | "
                     f"{_gap(e['gap_closed']['mean_f1']) if _distilled(arm) else ''} |")
    lines += ["", "Arms:", ""] + [f"- **{a}**: {e['description']}" for a, e in results["arms"].items()]
    lines += [""] + [line + "\n" for line in verdict_lines(results)]
    first = next(iter(results["arms"].values()))
    if "groups" in first:
        groups = list(first["groups"])
        lines += ["## Per business scenario (group): mean F1 over tasks", "",
                  "| arm | " + " | ".join(groups) + " | worst group | spread (max − min) |",
                  "|---" * (len(groups) + 3) + "|"]
        for arm, e in results["arms"].items():
            lines.append(f"| {arm} | " + " | ".join(_pm(e["groups"][g]) for g in groups)
                         + f" | {_pm(e['worst_group_f1'])} | {_pm(e['group_f1_spread'])} |")
        lines.append("")
    lines += ["## Teacher calibration (seed means)", "",
              "Temperature fitted on a validation slice the teacher was not selected on, kept only where it lowered "
              "the cross-fitted held-out NLL and ECE (share of seeds in *kept*); ECE on test.", "",
              "| task | temperature | kept | ECE before | ECE after |", "|---|---|---|---|---|"]
    for t, c in results["teacher_calibration"].items():
        lines.append(f"| {t} | {c['temperature']:.3f} | {c['kept']:.0%} | {c['test_ece_before']:.4f} | "
                     f"{c['test_ece_after']:.4f} |")
    weighted = {a: e["weights"] for a, e in results["arms"].items() if "weights" in e}
    if weighted:
        lines += ["", "## Distillation weights on train rows (seed means)", "",
                  "Right/wrong judged on labelled train rows (and on unlabelled rows with oracle labels, when given). "
                  "*KD mass on teacher-wrong rows* is the share of the total distillation weight those rows get; "
                  "PFD's equals the teacher's error rate.", "",
                  "| arm | task | mean w | ESS / n | mean w, teacher right | mean w, teacher wrong "
                  "| KD mass on teacher-wrong rows |", "|---|---|---|---|---|---|---|"]
        for arm, per_task in weighted.items():
            for t, w in per_task.items():
                lines.append(f"| {arm} | {t} | {w['mean_weight']:.3f} | {w['ess_fraction']:.3f} | "
                             f"{w['mean_weight_teacher_correct']:.3f} | {w['mean_weight_teacher_wrong']:.3f} | "
                             f"{w.get('kd_mass_teacher_wrong', float('nan')):.3f} |")
        scenario_rows = [(arm, t, w["mean_weight_by_group"]) for arm, per_task in weighted.items()
                         for t, w in per_task.items() if "mean_weight_by_group" in w]
        if scenario_rows:
            groups = sorted({g for _, _, by in scenario_rows for g in by})
            lines += ["", "Mean distillation weight per business scenario (train rows, seed means; with "
                      "`scenario_reliability` this is λ_g / λ):", "",
                      "| arm | task | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
            lines += [f"| {arm} | {t} | " + " | ".join(f"{by[g]:.3f}" if g in by else "" for g in groups) + " |"
                      for arm, t, by in scenario_rows]
    skipped = results.get("skipped_rows") or []
    lines += ["", f"## Skipped rows ({len(skipped)})", ""]
    if skipped:
        lines += ["Rows left out under `--on-bad-video skip`:", "", "| file | row | id | column | reason |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['file']} | {r['row']} | {r['id']} | {r['column']} | {r['reason']} |" for r in skipped]
    else:
        lines.append("None: every row of the dataset was used.")
    lines += ["", "## Plots", ""] + [f"![{name}]({p.name})" for name, p in plots.items()]
    return atomic_write_text(path, "\n".join(lines) + "\n")
