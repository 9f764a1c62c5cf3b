"""Diagnostics of the per-sample distillation weights: histogram, effective sample size, weight when the teacher
is right vs wrong. If confidence weighting works, teacher-wrong rows should get clearly smaller weights. The
weights are the task's own (:meth:`cpfd.distill.task.DistillTask.row_weights`), not recomputed another way."""

from __future__ import annotations

import numpy as np
import torch

from cpfd.data.oracle import OracleLabels
from cpfd.data.prepared import PreparedData
from cpfd.distill.probs import task_probs
from cpfd.distill.targets import TeacherTargets
from cpfd.distill.task import DistillTask

BINS = 20


def effective_sample_size(total: float, total_sq: float, n: int) -> float:
    r"""Kish's effective sample size as a fraction of n, from the sums of the weights: :math:`(\sum w)^2 / (n \sum
    w^2)` with ``total`` :math:`= \sum w`, ``total_sq`` :math:`= \sum w^2`."""
    denom = n * total_sq
    return float(total**2 / denom) if denom > 0 else 0.0


CHUNK_ROWS = 262_144  # rows whose weights exist at once: the diagnostics of millions of rows stay a few MB


def _chunks(task: DistillTask, data: PreparedData, targets: TeacherTargets, rows: np.ndarray):
    """(row indices, the task's weights for them) per chunk of ``rows``."""
    for start in range(0, len(rows), CHUNK_ROWS):
        idx = torch.as_tensor(rows[start : start + CHUNK_ROWS], dtype=torch.long)
        weights = task.row_weights(idx, data.labels, data.label_mask, targets.logits)
        yield idx, {t: w.detach().cpu() for t, w in weights.items()}


def _judged(info, idx: torch.Tensor, w: torch.Tensor, data: PreparedData, targets: TeacherTargets,
            oracle: OracleLabels | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which weight elements are judged (labelled, or hidden-labelled by ``oracle``) and whether the teacher is
    right on them."""
    probs = task_probs(targets.logits[info.name][idx], info.kind, targets.temperatures.get(info.name, 1.0))
    labels, known = data.labels[info.name][idx], data.label_mask[info.name][idx]
    if oracle is not None and info.name in oracle.labels:
        hidden = oracle.mask[info.name][idx] & ~known
        labels = torch.where(info.kind.element_mask(hidden, labels), oracle.labels[info.name][idx].to(labels.dtype),
                             labels)
        known = known | hidden
    return info.kind.element_mask(known, w), info.kind.correct(probs, labels)


def weight_diagnostics(task: DistillTask, data: PreparedData, targets: TeacherTargets, rows: np.ndarray,
                       oracle: OracleLabels | None = None) -> dict:
    """The weights ``task`` gives ``rows`` in training, summarised per task. Right/wrong is judged on labelled
    rows, plus the unlabelled rows ``oracle`` has hidden labels for (evaluation only: the weights are the task's).

    Two streaming passes over chunks of rows (sums, then the histogram once the largest weight is known)."""
    names = [info.name for info in data.tasks]
    sums = {t: dict.fromkeys(("n", "w", "w2", "right", "n_right", "wrong", "n_wrong"), 0.0) for t in names}
    by_group = {t: {} for t in names}  # scenario -> [sum of w, count]: what a scenario-aware weight did
    top = dict.fromkeys(names, 0.0)
    for idx, weights in _chunks(task, data, targets, rows):
        for info in data.tasks:
            w = weights[info.name]
            if data.groups is not None:
                groups = np.asarray(data.groups[idx.numpy()]).astype(str)
                per_row = w.double().reshape(w.shape[0], -1)
                for g in np.unique(groups):
                    acc = by_group[info.name].setdefault(str(g), [0.0, 0])
                    in_g = torch.from_numpy(groups == g)
                    acc[0] += float(per_row[in_g].sum())
                    acc[1] += int(per_row[in_g].numel())
            judged, correct = _judged(info, idx, w, data, targets, oracle)
            w64, s = w.double(), sums[info.name]
            right, wrong = w64[judged & correct], w64[judged & ~correct]
            s["n"] += w64.numel()
            s["w"] += float(w64.sum())
            s["w2"] += float((w64**2).sum())
            s["right"] += float(right.sum())
            s["n_right"] += len(right)
            s["wrong"] += float(wrong.sum())
            s["n_wrong"] += len(wrong)
            top[info.name] = max(top[info.name], float(w.max())) if w.numel() else top[info.name]
    edges = {t: np.histogram_bin_edges([], bins=BINS, range=(0.0, max(1.0, top[t]))) for t in names}
    counts = {t: np.zeros(BINS, dtype=np.int64) for t in names}
    for _, weights in _chunks(task, data, targets, rows):
        for t in names:
            counts[t] += np.histogram(weights[t].numpy().reshape(-1), bins=edges[t])[0]
    report = {}
    for t in names:
        s = sums[t]
        mass = s["right"] + s["wrong"]
        judged = s["n_right"] + s["n_wrong"]
        report[t] = {
            "kd_mass_teacher_wrong": s["wrong"] / mass if mass > 0 else float("nan"),
            "rows_judged": int(judged),
            "mean_weight": s["w"] / s["n"] if s["n"] else float("nan"),
            "ess_fraction": effective_sample_size(s["w"], s["w2"], int(s["n"])),
            "mean_weight_teacher_correct": s["right"] / s["n_right"] if s["n_right"] else float("nan"),
            "mean_weight_teacher_wrong": s["wrong"] / s["n_wrong"] if s["n_wrong"] else float("nan"),
            "teacher_error_rate": float(s["n_wrong"] / max(judged, 1)),
            "histogram": {"edges": edges[t].tolist(), "counts": counts[t].tolist()},
        }
        if by_group[t]:
            report[t]["mean_weight_by_group"] = {g: total / n for g, (total, n) in sorted(by_group[t].items()) if n}
    data.release_memory()
    return report
