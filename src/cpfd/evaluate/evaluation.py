"""Evaluate full-dataset logits: thresholds tuned on one split, metrics on another, overall and per group."""

from __future__ import annotations

import numpy as np
import torch

from cpfd.data.prepared import PreparedData


def _rows(data: PreparedData, split: str, task: str, subset: np.ndarray | None = None) -> np.ndarray:
    keep = (data.split == split) & data.label_mask[task].numpy()
    if subset is not None:
        keep &= subset
    return np.flatnonzero(keep)


def evaluate_logits(
    data: PreparedData,
    logits: dict[str, torch.Tensor],
    eval_split: str = "test",
    tune_split: str = "val",
    temperatures: dict[str, float] | None = None,
    by_group: bool = True,
    within: np.ndarray | None = None,
) -> dict:
    """Per-task metrics on ``eval_split`` with thresholds tuned on ``tune_split``; ``logits`` cover every row;
    ``within`` (a boolean mask over rows) restricts both, e.g. to the validation rows a teacher is selected on.

    Returns ``{"tasks": {task: metrics}, "mean_f1": float, "groups": {group: {"tasks":..., "mean_f1":...}},
    "group_f1_spread": float}``.
    """
    temperatures = temperatures or {}
    result: dict = {"tasks": {}}
    probs_all: dict[str, np.ndarray] = {}
    thresholds: dict[str, list[float] | None] = {}
    for task in data.tasks:
        kind = task.kind
        probs = kind.probs(logits[task.name].float(), temperatures.get(task.name, 1.0)).numpy()
        probs_all[task.name] = probs
        labels = data.labels[task.name].numpy()
        tune = _rows(data, tune_split, task.name, within)
        thresholds[task.name] = kind.tune_thresholds(probs[tune], labels[tune])
        ev = _rows(data, eval_split, task.name, within)
        result["tasks"][task.name] = kind.metrics(probs[ev], labels[ev], thresholds[task.name])
    result["mean_f1"] = float(np.nanmean([m["f1"] for m in result["tasks"].values()]))
    if by_group and data.groups is not None:
        result["groups"] = {}
        for group in sorted(set(data.groups[data.split == eval_split])):
            in_group = data.groups == group
            tasks = {}
            for task in data.tasks:
                ev = _rows(data, eval_split, task.name, in_group)
                labels = data.labels[task.name].numpy()
                tasks[task.name] = task.kind.metrics(probs_all[task.name][ev], labels[ev], thresholds[task.name])
            f1s = [m["f1"] for m in tasks.values() if m["n"]]
            result["groups"][group] = {"tasks": tasks, "mean_f1": float(np.mean(f1s)) if f1s else float("nan")}
        means = [g["mean_f1"] for g in result["groups"].values() if np.isfinite(g["mean_f1"])]
        result["group_f1_spread"] = float(max(means) - min(means)) if means else float("nan")
    return result
