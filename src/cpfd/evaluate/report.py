"""The compare report: a rich table for the terminal and ``report.md`` with the plots beside it."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from cpfd.io import atomic_write_text


def _pm(stats: dict) -> str:
    return "n/a" if stats["mean"] != stats["mean"] else f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def _pm_short(stats: dict) -> str:
    return "n/a" if stats["mean"] != stats["mean"] else f"{stats['mean']:.3f} ±{stats['std']:.3f}"


def _gap(value) -> str:
    return "undefined" if value is None else f"{100 * value:+.1f} %"


def rich_table(results: dict) -> Table:
    seeds = results.get("options", {}).get("seeds", "?")
    table = Table(title=f"cpfd compare — {results['dataset']} (test F1, mean ± std over {seeds} seeds)")
    table.add_column("arm", style="bold", no_wrap=True)
    for task in results["tasks"]:
        table.add_column(task, justify="right")
    table.add_column("mean F1", justify="right")
    table.add_column("gap closed", justify="right")
    for arm, entry in results["arms"].items():
        table.add_row(arm, *[_pm_short(entry["f1"][t]) for t in results["tasks"]], _pm_short(entry["mean_f1"]),
                      _gap(entry["gap_closed"]["mean_f1"]) if arm not in ("baseline", "teacher") else "")
    return table


def markdown_report(results: dict, path: Path, plots: dict[str, Path]) -> Path:
    tasks = results["tasks"]
    seeds = results.get("options", {}).get("seeds", "?")
    lines = [f"# cpfd compare: {results['dataset']}", "",
             f"Test F1, mean ± std over {seeds} seeds, identical budgets per arm. Binary: F1 at the validation-tuned "
             "threshold; multiclass: macro-F1; multilabel: macro-F1 with per-label validation thresholds. "
             "Gap closed = (F1_arm − F1_baseline) / (F1_teacher − F1_baseline) on the seed means.", "",
             "| arm | " + " | ".join(tasks) + " | mean F1 | gap closed (mean F1) | gap closed (mean of tasks) |",
             "|---" * (len(tasks) + 4) + "|"]
    for arm, e in results["arms"].items():
        gaps = ("", "") if arm in ("baseline", "teacher") else (_gap(e["gap_closed"]["mean_f1"]),
                                                                 _gap(e["gap_closed"]["mean_of_tasks"]))
        lines.append(f"| {arm} | " + " | ".join(_pm(e["f1"][t]) for t in tasks) + f" | {_pm(e['mean_f1'])} | "
                     f"{gaps[0]} | {gaps[1]} |")
    lines += ["", "Arms:", ""] + [f"- **{a}**: {e['description']}" for a, e in results["arms"].items()]
    verdict = results.get("cpfd_vs_pfd")
    if verdict:
        lines += ["", f"**CPFD vs PFD:** mean F1 difference {verdict['cpfd_minus_pfd']:+.4f} — "
                  + ("CPFD beats PFD on this dataset." if verdict["cpfd_beats_pfd"]
                     else "CPFD does **not** beat PFD on this dataset.")]
    gap_notes = [t for t in tasks if results["arms"]["cpfd"]["gap_closed"].get(t) is None]
    if gap_notes:
        lines += ["", f"Gap closed is undefined for {', '.join(gap_notes)}: the teacher is not better than the baseline."]
    first = next(iter(results["arms"].values()))
    if "groups" in first:
        groups = list(first["groups"])
        lines += ["", "## Per business scenario (group): mean F1 over tasks", "",
                  "| arm | " + " | ".join(groups) + " | spread (max − min) |", "|---" * (len(groups) + 2) + "|"]
        for arm, e in results["arms"].items():
            lines.append(f"| {arm} | " + " | ".join(_pm(e["groups"][g]) for g in groups)
                         + f" | {_pm(e['group_f1_spread'])} |")
    lines += ["", "## Teacher calibration (temperature scaling on validation; ECE on test)", "",
              "| task | temperature | ECE before | ECE after |", "|---|---|---|---|"]
    for t, c in results["teacher_calibration"].items():
        lines.append(f"| {t} | {c['temperature']:.3f} | {c['test_ece_before']:.4f} | {c['test_ece_after']:.4f} |")
    weighted = {a: e["weights"] for a, e in results["arms"].items() if "weights" in e and a.startswith("cpfd")}
    if weighted:
        lines += ["", "## Distillation weights on train rows (CPFD arms)", "",
                  "| arm | task | mean w | ESS / n | mean w, teacher right | mean w, teacher wrong |",
                  "|---|---|---|---|---|---|"]
        for arm, per_task in weighted.items():
            for t, w in per_task.items():
                lines.append(f"| {arm} | {t} | {w['mean_weight']:.3f} | {w['ess_fraction']:.3f} | "
                             f"{w['mean_weight_teacher_correct']:.3f} | {w['mean_weight_teacher_wrong']:.3f} |")
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
