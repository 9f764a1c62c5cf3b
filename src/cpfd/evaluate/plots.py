"""PNG plots for the compare report: F1 by arm, CPFD weight histograms, teacher reliability diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cpfd.data.prepared import PreparedData  # noqa: E402
from cpfd.distill.targets import TeacherTargets  # noqa: E402
from cpfd.evaluate.report import f1_columns  # noqa: E402


def f1_by_arm(results: dict, path: Path) -> Path:
    """One panel per task (and the task mean where there are several), one bar per arm, mean ± std over seeds."""
    arms = list(results["arms"])
    columns = f1_columns(results)
    fig, axes = plt.subplots(1, len(columns), figsize=(2.2 + 0.45 * len(arms) * len(columns), 3.6), squeeze=False)
    colours = plt.get_cmap("tab10")(np.arange(len(arms)) % 10)
    for ax, (column, task) in zip(axes[0], columns):
        stats = [results["arms"][a]["mean_f1"] if task is None else results["arms"][a]["f1"][task] for a in arms]
        means = np.array([s["mean"] for s in stats])
        stds = np.nan_to_num(np.array([s["std"] for s in stats]))
        ax.bar(np.arange(len(arms)), means, yerr=stds, capsize=2, color=colours)
        finite = np.isfinite(means)
        if finite.any():
            lo, hi = (means - stds)[finite].min(), (means + stds)[finite].max()
            pad = max(0.02, 0.15 * (hi - lo))
            ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
        ax.set_xticks(np.arange(len(arms)), arms, rotation=60, ha="right", fontsize=7)
        ax.set_title(column, fontsize=9)
    axes[0][0].set_ylabel("test F1 (mean ± std over seeds)", fontsize=8)
    fig.suptitle(f"{results['dataset']}: F1 by arm", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def weight_histogram(weights: dict, path: Path, title: str = "CPFD weights") -> Path:
    tasks = list(weights)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        h = weights[task]["histogram"]
        edges = np.array(h["edges"])
        ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge", edgecolor="black", linewidth=0.3)
        ax.set_title(f"{task}: ESS {weights[task]['ess_fraction']:.2f}, "
                     f"w|right {weights[task]['mean_weight_teacher_correct']:.2f}, "
                     f"w|wrong {weights[task]['mean_weight_teacher_wrong']:.2f}", fontsize=8)
        ax.set_xlabel("w_i")
    axes[0][0].set_ylabel("train rows")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def reliability_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    acc = np.bincount(which, weights=correct.astype(float), minlength=n_bins) / np.maximum(counts, 1)
    mean_conf = np.bincount(which, weights=conf, minlength=n_bins) / np.maximum(counts, 1)
    return mean_conf, acc, counts


def reliability_diagram(data: PreparedData, targets: TeacherTargets, path: Path, split: str = "test",
                        title_suffix: str = "") -> Path:
    """Teacher confidence vs accuracy on ``split``, before and after temperature scaling."""
    tasks = data.tasks
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = np.flatnonzero((data.split == split) & data.label_mask[task.name].numpy())
        logits, labels = targets.logits[task.name][rows], data.labels[task.name][rows]
        for temp, style in ((1.0, "o--"), (targets.temperatures[task.name], "s-")):
            probs = task.kind.probs(logits, temp)
            correct = task.kind.correct(probs, labels).numpy().reshape(-1)
            conf = task.kind.two_class(probs).max(-1).values.numpy().reshape(-1)
            mean_conf, acc, counts = reliability_bins(conf, correct)
            keep = counts > 0
            ax.plot(mean_conf[keep], acc[keep], style, ms=3, label=f"T={temp:.2f}")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
        ax.set_title(f"teacher: {task.name} ({split}{', ' + title_suffix if title_suffix else ''})", fontsize=9)
        ax.set_xlabel("confidence")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
