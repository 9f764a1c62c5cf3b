"""Run the frozen teacher once over every row, calibrate it, and cache its outputs (:mod:`cpfd.distill.targets`).

With ``oof_folds = K`` the train rows get cross-fitted outputs: fold teacher k scores the fold it did not see;
the full teacher scores val, test and unlabelled rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cpfd.data.prepared import PreparedData
from cpfd.distill import targets as cache
from cpfd.distill.calibration import choose_temperature, temperature_nll
from cpfd.distill.confidence import true_class
from cpfd.distill.probs import task_probs
from cpfd.distill.targets import TeacherTargets
from cpfd.evaluate.evaluation import evaluate_logits
from cpfd.models.build import load_teacher
from cpfd.runs import RunFolder
from cpfd.train.loop import predict
from cpfd.train.teacher_kinds import gbdt_outputs, logreg_outputs, outputs_frame, read_outputs

Log = Callable[[str], None]
# Teacher kinds fitted here that are not networks: the function from their model file to (logits, "embedding").
FITTED_OUTPUTS = {"lightgbm": gbdt_outputs, "logreg": logreg_outputs}


def neural_outputs(teacher: nn.Module, data: PreparedData, folds: list[tuple[nn.Module, np.ndarray]] | None = None,
                   embedding: bool = False, rows: np.ndarray | None = None
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Teacher logits (and fused embedding when ``embedding``) for every row, or only ``rows`` (zeros elsewhere);
    fold teachers overwrite their held-out rows."""
    rows = np.arange(len(data)) if rows is None else rows
    out = predict(teacher, data, rows, with_privileged=True, progress="teacher outputs", with_embedding=embedding)
    for k, (fold_teacher, held_out) in enumerate(folds or []):
        held_out = np.intersect1d(held_out, rows)
        fold_out = predict(fold_teacher, data, held_out, with_privileged=True,
                           progress=f"fold teacher {k + 1} outputs", with_embedding=embedding)
        rows_k = held_out
        for task in out["logits"]:
            out["logits"][task][rows_k] = fold_out["logits"][task][rows_k]
        if embedding:
            out["embedding"][rows_k] = fold_out["embedding"][rows_k]
    return out["logits"], out["embedding"]


def _share_path(run: RunFolder, rank: int, world: int):
    return run.teacher_outputs.with_name(f"teacher_outputs.rank{rank}of{world}.safetensors")


def write_output_share(run: RunFolder, data: PreparedData, rank: int, world: int, log: Log = print) -> None:
    """One rank's share of a neural teacher's raw logits (rows ``rank``, ``rank + world``, ...) as a part file of
    its own, keyed like the cache; a rank whose part is already there (a resumed job) skips its pass. Rank 0 then
    assembles the parts (:func:`teacher_targets`)."""
    run = RunFolder(run)
    key = cache.cache_key(run.teacher_checkpoints(), data.fingerprint)
    path = _share_path(run, rank, world)
    if cache.cached_key(path) == key:
        log(f"teacher outputs: rank {rank} share already in {path}")
        return
    rows = np.arange(rank, len(data), world)
    fold_teachers = [(load_teacher(run, data, run.fold(k).best), held) for k, held in enumerate(_fold_rows(run, data))]
    logits, _ = neural_outputs(load_teacher(run, data), data, fold_teachers, rows=rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    cache.save_targets(path, TeacherTargets({t: z[rows] for t, z in logits.items()}, None, {}), key)


def _assembled_shares(run: RunFolder, data: PreparedData, key: str, log: Log) -> dict[str, torch.Tensor] | None:
    """The raw logits put together from every rank's part file, or None when a complete, current set is missing."""
    for path in sorted(run.teacher_outputs.parent.glob("teacher_outputs.rank0of*.safetensors")):
        world = int(path.name.split("of")[1].split(".")[0])
        parts = [_share_path(run, r, world) for r in range(world)]
        if not all(cache.cached_key(p) == key for p in parts):
            continue
        logits = {t.name: torch.zeros(len(data), t.n_outputs) for t in data.tasks}
        for rank, part in enumerate(parts):
            share = cache.load_targets(part).logits
            for task in logits:
                logits[task][rank::world] = share[task]
        log(f"teacher outputs: assembled from {world} rank shares")
        for part in parts:
            part.unlink()
        return logits
    return None


def calibrated_targets(data: PreparedData, logits: dict[str, torch.Tensor], embedding: torch.Tensor,
                       calibrate: bool = True, calibration_share: float = 0.5) -> TeacherTargets:
    """The temperature is fitted on the calibration slice of validation and kept only if it lowers the
    cross-fitted held-out NLL and ECE (:func:`cpfd.distill.calibration.choose_temperature`)."""
    temperatures, report = {}, {}
    calib = data.calibration_rows(calibration_share)
    for task in data.tasks:
        rows = np.flatnonzero(calib & data.label_mask[task.name].numpy())
        if not calibrate:
            temperatures[task.name] = 1.0
            continue
        # Two folds inside the slice, from the same id hash: each row is held out once.
        scale = calibration_share if calibration_share > 0 else 1.0
        folds = (data.id_fraction(rows) / scale * 2).astype(int).clip(0, 1)
        choice = choose_temperature(logits[task.name][rows], data.labels[task.name][rows], task.kind, folds)
        temperatures[task.name] = choice["temperature"]
        report[task.name] = choice | {"rows": len(rows)}
    return TeacherTargets(logits, embedding, temperatures, report)


def _fold_rows(run: RunFolder, data: PreparedData) -> list[np.ndarray]:
    if not run.folds_file.exists():
        return []
    position = {i: k for k, i in enumerate(data.ids)}
    return [np.array(sorted(position[i] for i in ids if i in position), dtype=np.int64) for ids in run.folds_ids()]


def raw_outputs(run: RunFolder, data: PreparedData, embedding: bool = False
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Uncalibrated logits (+ embedding: a neural teacher's fused vector only when ``embedding``) of a teacher run of
    any kind, cross-fitted where it has folds."""
    kind = run.teacher_kind
    folds = _fold_rows(run, data)
    if kind == "file":
        return read_outputs(run.imported_outputs, data, data.id_column)
    if kind in FITTED_OUTPUTS:
        outputs = FITTED_OUTPUTS[kind]
        logits, embedding = outputs(run.teacher_model(kind), data)
        for k, rows in enumerate(folds):
            fold_logits, fold_embedding = outputs(run.fold(k).teacher_model(kind), data)
            for task in logits:
                logits[task][rows] = fold_logits[task][rows]
            embedding[rows] = fold_embedding[rows]
        return logits, embedding
    fold_teachers = [(load_teacher(run, data, run.fold(k).best), rows) for k, rows in enumerate(folds)]
    return neural_outputs(load_teacher(run, data), data, fold_teachers, embedding)


def choose_teacher_kind(run: RunFolder, data: PreparedData, calibration_share: float) -> dict:
    """``teacher.kind=auto``: the kind ("neural" or "logreg") whose teacher has the lower log-loss on the
    calibration slice (all validation rows when the share is 0), summed over tasks; a tie keeps the network.
    Neither teacher was selected on those rows, so the comparison is not tilted toward the one that saw them."""
    rows = np.flatnonzero(data.calibration_rows(calibration_share) if calibration_share > 0 else data.split == "val")
    candidates = {"neural": neural_outputs(load_teacher(run, data), data, rows=rows)[0],
                  "logreg": logreg_outputs(run.logreg_model, data)[0]}
    nll = {kind: 0.0 for kind in candidates}
    for task in data.tasks:
        labelled = rows[data.label_mask[task.name].numpy()[rows]]
        if not len(labelled):
            continue
        for kind, logits in candidates.items():
            nll[kind] += temperature_nll(logits[task.name][labelled], data.labels[task.name][labelled], task.kind, 1.0)
    kind = "logreg" if nll["logreg"] < nll["neural"] else "neural"
    return {"kind": kind, "calibration_nll": nll, "rows": len(rows)}


def export_outputs(run: RunFolder, data: PreparedData, path: Path) -> Path:
    """Write a teacher run's uncalibrated logits on ``data`` as a ``teacher.kind: file`` table (id column +
    ``logits_<task>``): a teacher fitted on one table (last quarter's history) applied to another (today's rows)."""
    logits, _ = raw_outputs(RunFolder(run), data)
    frame = outputs_frame(list(data.ids), {task: z.numpy().reshape(len(z), -1) for task, z in logits.items()},
                          data.id_column)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return Path(path)


def fold_logits(run: RunFolder, data: PreparedData) -> list[dict[str, torch.Tensor]]:
    """Every fold teacher's uncalibrated logits on *every* row (for the fold-variance confidence); [] without folds."""
    run = RunFolder(run)
    kind = run.teacher_kind
    out = []
    for k in range(len(_fold_rows(run, data))):
        if kind in FITTED_OUTPUTS:
            out.append(FITTED_OUTPUTS[kind](run.fold(k).teacher_model(kind), data)[0])
        elif kind == "neural":
            out.append(predict(load_teacher(run, data, run.fold(k).best), data, np.arange(len(data)),
                               with_privileged=True)["logits"])
    return out


def teacher_targets(run: RunFolder, data: PreparedData, log: Log = print, embedding: bool = False) -> TeacherTargets:
    """The teacher's cached outputs for ``data``; (re)built when missing, stale or corrupt.

    The fused embedding (n × d floats, for feature distillation) is computed and cached, in a file of its own, only
    when ``embedding`` asks for it; the logits alone are what every other use needs."""
    run = RunFolder(run)
    checkpoints = run.teacher_checkpoints()

    key = cache.cache_key(checkpoints, data.fingerprint)

    def build() -> TeacherTargets:
        t_cfg = run.config.teacher
        shares = None if embedding else _assembled_shares(run, data, key, log)
        raw = (shares, None) if shares is not None else raw_outputs(run, data, embedding)
        return calibrated_targets(data, *raw, calibrate=t_cfg.calibrate, calibration_share=t_cfg.calibration_share)

    path = run.teacher_outputs.with_suffix(".embedding.safetensors") if embedding else run.teacher_outputs
    return cache.get_or_build(path, key, build, log)


def in_sample_confidence(targets: TeacherTargets, data: PreparedData) -> dict[str, float]:
    """Mean calibrated teacher probability of the true class on labelled train rows (a reliability diagnostic)."""
    rows = torch.from_numpy(data.indices("train", labelled_only=True))
    out = {}
    for task in data.tasks:
        mask = data.label_mask[task.name][rows]
        probs = task_probs(targets.logits[task.name][rows], task.kind, targets.temperatures[task.name])
        c = true_class(probs, data.labels[task.name][rows], mask, task.kind)[mask]
        out[task.name] = float(c.mean()) if len(c) else float("nan")
    return out


def teacher_report(data: PreparedData, targets: TeacherTargets) -> dict:
    raw = evaluate_logits(data, targets.logits)
    calibrated = evaluate_logits(data, targets.logits, temperatures=targets.temperatures)
    report = {
        "role": "teacher",
        "test": raw,
        # Scored like the students' validation rows, so a configuration can be chosen on validation for every arm
        # whatever the teacher kind (an ``auto`` or tree teacher has no training-loop validation score).
        "val": evaluate_logits(data, targets.logits, "val"),
        "calibration": {
            t.name: {"temperature": targets.temperatures[t.name], "test_ece_before": raw["tasks"][t.name]["ece"],
                     "test_ece_after": calibrated["tasks"][t.name]["ece"], **targets.calibration.get(t.name, {})}
            for t in data.tasks
        },
        "train_true_class_confidence": in_sample_confidence(targets, data),
    }
    return report
