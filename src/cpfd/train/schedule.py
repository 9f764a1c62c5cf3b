"""The two-stage schedule: 1) fit the teacher (and its fold teachers), run it once and cache its outputs;
2) distil a student against those outputs. Each stage builds a :class:`~cpfd.distill.task.DistillTask` and hands
it to the one training loop (:func:`cpfd.train.loop.fit`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from functools import partial

import numpy as np
import torch
from lightning_fabric import Fabric

from cpfd.config import RunConfig
from cpfd.data.oracle import OracleLabels
from cpfd.data.prepared import PreparedData
from cpfd.distill.calibration import scenario_temperatures
from cpfd.distill.context import TaskContext
from cpfd.distill.targets import TeacherTargets
from cpfd.distill.probs import task_probs
from cpfd.distill.losses import WithAuxiliary, build_loss
from cpfd.train.linear_start import start_from_logistic_regression
from cpfd.registry import LOSSES
from cpfd.distill.task import CachedTeacher, DistillTask, OnlineTeacher
from cpfd.evaluate.diagnostics import weight_diagnostics
from cpfd.evaluate.evaluation import evaluate_logits
from cpfd.evaluate.references import has_student_vectors
from cpfd.errors import UsageError
from cpfd.io import atomic_write_json
from cpfd.models.build import (
    StudentWithProjector,
    build_student,
    build_teacher,
    input_shapes,
    load_student,
    load_teacher,
)
from cpfd.models.synchronous import SynchronousPair
from cpfd.runs import RunFolder
from cpfd.train.loop import fit, predict, unwrap
from cpfd.train.teacher_kinds import fit_gbdt, fit_logreg, import_outputs
from cpfd.train.teacher_outputs import (
    choose_teacher_kind,
    fold_logits,
    teacher_report,
    teacher_targets,
    write_output_share,
)

Log = Callable[[str], None]


def _write_run(run: RunFolder, cfg: RunConfig, data: PreparedData, role: str, extra: dict | None = None) -> None:
    run.write(cfg, {
        "role": role,
        "dataset": str(data.root),
        "dataset_name": data.name,
        "fingerprint": data.fingerprint,
        "tasks": [{"name": t.name, "type": t.type, "classes": t.classes} for t in data.tasks],
        "input_shapes": {k: list(v) for k, v in input_shapes(data).items()},
        "privileged_names": data.privileged_names if role == "teacher" else [],
        "skipped_rows": [asdict(row) for row in data.skipped],
        "extraction": data.extraction,
        "inputs_spec": data.inputs_spec,
        **(extra or {}),
    })


def _teacher_objective(cfg: RunConfig, data: PreparedData):
    """Teachers learn from labels only, plus the dense tower's auxiliary loss."""
    labels_only = build_loss(cfg.distill.model_copy(update={"method": "none"}), {t.name: t.kind for t in data.tasks})
    return WithAuxiliary(labels_only, cfg.teacher.aux_weight)


RESUMABLE_CHANGES = {"train.epochs", "train.progress"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= _flatten(v, key + ".") if isinstance(v, dict) else {key: v}
    return out


def check_destination(run: RunFolder, role: str, force: bool = False) -> None:
    """A run writes into a new folder or over a previous run of the same role, never over anything else."""
    if force or not run.path.exists():
        return
    if not run.path.is_dir():
        raise UsageError(f"--out {run.path} is a file, not a run folder")
    if not any(run.path.iterdir()):
        return
    if not run.run_file.exists() or RunFolder(run.path).info.get("role") != role:
        raise UsageError(f"--out {run.path} is a non-empty folder that is not a previous {role} run; choose a new "
                         "folder (or --force to write into it)")


def config_changes(before: RunConfig, now: RunConfig, ignore: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """``"key: old -> new"`` for every setting (dotted key) that differs, except those in ``ignore``."""
    old, new = _flatten(before.model_dump(mode="json")), _flatten(now.model_dump(mode="json"))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
            for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k) and k not in ignore]


def check_same_data(run: RunFolder, data: PreparedData, flag: str = "--resume") -> None:
    if run.info.get("fingerprint") != data.fingerprint:
        raise UsageError(f"{flag}: {run.path} was trained on another dataset or another version of it "
                         f"(fingerprint {str(run.info.get('fingerprint'))[:12]} != {data.fingerprint[:12]})")


def check_resume(run: RunFolder, cfg: RunConfig, data: PreparedData) -> None:
    """``--resume`` continues the same run: the same dataset and the same config (more epochs are allowed)."""
    if not run.run_file.exists():
        return
    check_same_data(run, data)
    changed = config_changes(run.config, cfg, RESUMABLE_CHANGES)
    if changed:
        raise UsageError(f"--resume: the config differs from the run's own ({', '.join(changed[:5])}); resume with "
                         "the same config or start a new run folder")


def linear_start(model, data: PreparedData, cfg: RunConfig, rows: np.ndarray, select: np.ndarray | None,
                 log: Log) -> bool:
    """With ``model.wide_init=logreg``, start ``model`` at its logistic regression (:mod:`cpfd.train.linear_start`);
    True when it did, so the training loop scores the start as a checkpoint."""
    if cfg.model.wide_init != "logreg":
        return False
    counts = start_from_logistic_regression(model, data, rows, select, cfg.train.seed)
    log(f"wide path started at a logistic regression on {counts} labelled train rows")
    return True


def fold_assignment(data: PreparedData, cfg: RunConfig) -> list[np.ndarray]:
    rows = np.random.default_rng(cfg.train.seed).permutation(data.indices("train", labelled_only=True))
    return [np.sort(part) for part in np.array_split(rows, cfg.teacher.oof_folds)]


def _fit_one_teacher(kind: str, run: RunFolder, rows: np.ndarray, seed: int, desc: str, *, data: PreparedData,
                     cfg: RunConfig, fabric: Fabric, select: np.ndarray | None, log: Log, resume: bool) -> dict:
    """One teacher of ``kind`` on ``rows`` into ``run``; the training summary of a network, else {}."""
    if kind in ("lightgbm", "logreg"):
        if fabric.is_global_zero:
            fitter = fit_gbdt if kind == "lightgbm" else fit_logreg
            fitter(data, cfg, run.teacher_model(kind), rows, select)
        return {}
    fabric.seed_everything(seed, verbose=False)
    teacher = build_teacher(data, cfg)
    started = linear_start(teacher, data, cfg, rows, select, log)
    task = DistillTask(teacher, _teacher_objective(cfg, data), model_takes_privileged=True)
    return fit_summary(fit(fabric, task, data, rows, cfg.train, run, resume=resume, desc=desc, select_within=select,
                           score_start=started))


def fit_teacher(data: PreparedData, cfg: RunConfig, run_dir, fabric: Fabric, resume: bool = False,
                log: Log = print, extra: dict | None = None, force: bool = False) -> dict:
    """Train the teacher (early stopping on validation loss), its fold teachers if ``oof_folds``, then cache its
    outputs."""
    run = RunFolder(run_dir)
    if fabric.is_global_zero:  # rank 0 owns the folder; the others would race with its writes
        check_destination(run, "teacher", force)
        if resume:
            check_resume(run, cfg, data)
    if fabric.is_global_zero:
        _write_run(run, cfg, data, "teacher", extra)
    labelled = data.indices("train", labelled_only=True)
    # Teachers are selected on validation rows outside the calibration slice their temperature is fitted on.
    select = ~data.calibration_rows(cfg.teacher.calibration_share) if cfg.teacher.calibration_share > 0 else None
    folds = fold_assignment(data, cfg) if cfg.teacher.oof_folds >= 2 and cfg.teacher.kind != "file" else []
    if fabric.is_global_zero and folds:
        atomic_write_json(run.folds_file, [data.ids[rows].tolist() for rows in folds])
    kind = cfg.teacher.kind
    summary: dict = {"kind": kind}
    if kind == "file":
        if fabric.is_global_zero:
            import_outputs(cfg.teacher.outputs_file, data, run.imported_outputs, data.id_column)
    else:
        fit_one = partial(_fit_one_teacher, data=data, cfg=cfg, fabric=fabric, select=select, log=log, resume=resume)
        if kind == "auto":
            network = fit_one("neural", run, labelled, cfg.train.seed, "teacher")
            linear = has_student_vectors(data)
            if linear:
                fit_one("logreg", run, labelled, cfg.train.seed, "teacher")
            if fabric.is_global_zero:
                if linear:
                    choice = choose_teacher_kind(run, data, cfg.teacher.calibration_share)
                    log(f"teacher.kind=auto kept {choice['kind']} (calibration-slice log-loss "
                        + ", ".join(f"{k} {v:.4f}" for k, v in choice["calibration_nll"].items()) + ")")
                else:
                    choice = {"kind": "neural", "why": "end-to-end inputs: no precomputed student vectors for the "
                              "logistic regression, so the network is the teacher"}
                    log(f"teacher.kind=auto: {choice['why']}")
                atomic_write_json(run.teacher_choice_file, choice)
            fabric.barrier()
            kind = run.teacher_kind
            # The network's training summary (best epoch, validation F1) describes the teacher only if it was kept.
            summary |= {"chosen": kind} | (network if kind == "neural" else {"neural_fit": network})
        else:
            summary |= fit_one(kind, run, labelled, cfg.train.seed, "teacher")
        for k, held_out in enumerate(folds):
            fit_one(kind, run.fold(k), np.setdiff1d(labelled, held_out), cfg.train.seed + 1000 * (k + 1),
                    f"fold {k + 1}/{len(folds)}")
    if cfg.teacher.fit_reference and cfg.teacher.use_privileged and data.groups is not None:
        r_cfg = cfg.model_copy(deep=True)
        r_cfg.teacher = r_cfg.teacher.model_copy(update={"use_privileged": False, "kind": "neural", "oof_folds": 0,
                                                         "fit_reference": False, "outputs_file": None})
        log(f"reference teacher (no privileged features) -> {run.reference.path}")
        summary["reference"] = str(run.reference.path)
        fit_teacher(data, r_cfg, run.reference.path, fabric, resume=resume, log=log,
                    extra={"teacher_kind": "reference"}, force=force)
    metrics = {}
    if kind == "neural" and fabric.world_size > 1:
        # Every rank scores its share of the rows; rank 0 assembles them into the cache.
        write_output_share(run, data, fabric.global_rank, fabric.world_size, log)
        fabric.barrier()
    if fabric.is_global_zero:
        metrics = teacher_report(data, teacher_targets(run, data, log)) | summary
        atomic_write_json(run.metrics_file, metrics)
    fabric.barrier()
    return metrics


def student_train_rows(data: PreparedData, cfg: RunConfig) -> np.ndarray:
    """Distillation uses unlabelled train rows too (they get the teacher's soft label); the baseline cannot."""
    objective = LOSSES.get(cfg.distill.method)
    soft_labels = objective.distils or getattr(objective, "trains_teacher", False)
    return data.indices("train", labelled_only=not (soft_labels and cfg.distill.use_unlabelled))


def per_scenario_targets(data: PreparedData, targets: TeacherTargets, within: np.ndarray | None = None
                         ) -> TeacherTargets:
    """The teacher's logits divided row-wise by their scenario's temperature
    (:func:`cpfd.distill.calibration.scenario_temperatures`, fitted on the validation rows in ``within``: the
    teacher's calibration slice); the global temperatures become 1 (already applied)."""
    logits, report = {}, {}
    for task in data.tasks:
        z = targets.logits[task.name]
        t = scenario_temperatures(z, data.labels[task.name], data.label_mask[task.name], data.split, data.groups,
                                  task.kind, within=within)
        logits[task.name] = z / t.reshape(-1, *([1] * (z.dim() - 1)))
        groups = data.groups if data.groups is not None else np.array(["(all)"] * len(data), dtype=object)
        report[task.name] = {str(g): round(float(t[np.flatnonzero(groups == g)[0]]), 4) for g in np.unique(groups)}
    return TeacherTargets(logits, targets.embedding, {t: 1.0 for t in targets.temperatures},
                          {**targets.calibration, "scenario_temperature": report})


def fold_mean_targets(data: PreparedData, targets: TeacherTargets, contexts: dict[str, TaskContext]) -> TeacherTargets:
    """The fold teachers' mean probability as the distillation target (with ``fold_variance``), as logits."""
    logits = {}
    for task in data.tasks:
        logits[task.name] = task.kind.logits_from_probs(contexts[task.name].fold_probs.mean(0),
                                                        targets.logits[task.name])
    return TeacherTargets(logits, targets.embedding, {t: 1.0 for t in targets.temperatures},
                          {**targets.calibration, "target": "fold mean"})


def confidence_contexts(data: PreparedData, objective, reference_dir=None, oracle: OracleLabels | None = None,
                        log: Log = print, teacher_dir=None) -> dict[str, TaskContext] | None:
    """The :class:`TaskContext` per task for a context-aware confidence; None when the objective needs none.
    Hidden oracle labels go into it only when the confidence itself asks for them (the oracle control)."""
    if not getattr(objective, "takes_context", False):
        return None
    required = set(objective.context_needs)
    if data.groups is None and getattr(objective.confidence, "reference_needs_groups", False):
        required.discard("reference")
    reference = None
    if "reference" in required:
        if reference_dir is None:
            raise UsageError(f"confidence {objective.cfg.confidence!r} needs --reference RUN: a teacher fitted "
                             "without privileged features (teacher.use_privileged=false), e.g. compare's self teacher; "
                             "or fit the teacher with --set teacher.fit_reference=true")
        ref_run = RunFolder(reference_dir)
        if ref_run.config.teacher.use_privileged:
            raise UsageError(f"--reference {ref_run.path} was fitted with privileged features; the reference must "
                             "see only the student's inputs (teacher.use_privileged=false)")
        reference = teacher_targets(ref_run, data, log)
    folds = None
    if "folds" in required:
        folds = fold_logits(RunFolder(teacher_dir), data) if teacher_dir is not None else []
        if len(folds) < 2:
            raise UsageError(f"confidence {objective.cfg.confidence!r} needs a teacher fitted with cross-fitted "
                             "fold teachers (fit-teacher --oof-folds 5)")
    if "oracle" in required and oracle is None:
        raise UsageError(f"confidence {objective.cfg.confidence!r} needs hidden labels (cpfd compare --oracle-labels)")
    contexts = {}
    for task in data.tasks:
        ref_probs = None
        if reference is not None:
            ref_probs = task_probs(reference.logits[task.name], task.kind, reference.temperatures.get(task.name, 1.0))
        hidden = "oracle" in required
        fold_probs = None
        if folds is not None:
            t = objective.calibration.get(task.name, 1.0)
            fold_probs = torch.stack([task_probs(f[task.name], task.kind, t) for f in folds])
        contexts[task.name] = TaskContext(
            fold_probs=fold_probs,
            split=data.split, groups=data.groups, reference_probs=ref_probs,
            shortfall_se=objective.cfg.reliability_se, shortfall_power=objective.cfg.reliability_sharpness,
            scenario_calibrated=objective.cfg.reliability_calibration == "scenario",
            oracle_labels=oracle.labels.get(task.name) if hidden else None,
            oracle_mask=oracle.mask.get(task.name) if hidden else None)
    return contexts


def distill(data: PreparedData, cfg: RunConfig, run_dir, fabric: Fabric, teacher_dir=None, resume: bool = False,
            log: Log = print, extra: dict | None = None, force: bool = False, reference_dir=None,
            oracle: OracleLabels | None = None) -> dict:
    """Train a student: ``method=none`` (baseline), ``pfd``, ``cpfd`` (or a registered loss) against a teacher.

    ``reference_dir``: a no-privileged teacher run, for confidences that compare against one. ``oracle``: hidden
    labels of unlabelled rows (benchmarks); they reach training only through the ``oracle_gate`` confidence and
    otherwise serve the weight diagnostics alone."""
    run = RunFolder(run_dir)
    if teacher_dir is not None and RunFolder(teacher_dir).path.resolve() == run.path.resolve():
        raise UsageError(f"--out {run.path} is the teacher's folder; the student needs a folder of its own")
    if fabric.is_global_zero:  # rank 0 owns the folder; the others would race with its writes
        check_destination(run, "student", force)
        if resume:
            check_resume(run, cfg, data)
    objective_cls = LOSSES.get(cfg.distill.method)
    targets = teacher = None
    if objective_cls.distils:
        if teacher_dir is None:
            raise UsageError(f"distill --method {cfg.distill.method} needs --teacher RUN (a folder made by "
                             "`cpfd fit-teacher`)")
        teacher_run = RunFolder(teacher_dir)
        with fabric.rank_zero_first():  # rank 0 builds the cache, the others then read it
            targets = teacher_targets(teacher_run, data, log if fabric.is_global_zero else (lambda _m: None),
                                      embedding=cfg.distill.feature_kd != "none")
        if cfg.distill.target_temperature == "scenario":
            targets = per_scenario_targets(data, targets,
                                           data.calibration_rows(teacher_run.config.teacher.calibration_share))
            log(f"teacher targets divided by per-scenario temperatures: {targets.calibration['scenario_temperature']}")
        teacher = CachedTeacher(targets)
        if cfg.distill.teacher_outputs == "online":
            if teacher_run.teacher_kind != "neural":
                raise UsageError("distill.teacher_outputs=online needs a neural teacher; this one is "
                                 f"{teacher_run.teacher_kind} (use the cached outputs, or fit the teacher with "
                                 "teacher.kind=neural)")
            # Built before seeding, so the student's initialisation and dropout draws match the cached mode.
            frozen = load_teacher(teacher_run, data).to(fabric.device)
            teacher = OnlineTeacher(frozen, targets)
    task_types = {t.name: t.kind for t in data.tasks}
    if getattr(objective_cls, "trains_teacher", False):
        objective = objective_cls(cfg.distill, task_types, None, aux_weight=cfg.teacher.aux_weight)
    else:
        objective = objective_cls(cfg.distill, task_types, targets.temperatures if targets is not None else None)
    if reference_dir is None and teacher_dir is not None and "reference" in getattr(objective, "context_needs", ()):
        sibling = RunFolder(teacher_dir).reference  # fitted beside the teacher (teacher.fit_reference)
        reference_dir = sibling.path if sibling.run_file.exists() else None
    with fabric.rank_zero_first():  # before seeding: building a reference's cache must not move the RNG
        contexts = confidence_contexts(data, objective, reference_dir, oracle,
                                       log if fabric.is_global_zero else (lambda _m: None), teacher_dir)
    if contexts and next(iter(contexts.values())).fold_probs is not None:
        targets = fold_mean_targets(data, targets, contexts)
        teacher = CachedTeacher(targets)
    if fabric.is_global_zero:
        _write_run(run, cfg, data, "student", {"teacher": str(teacher_dir) if teacher_dir else None,
                                               "reference": str(reference_dir) if reference_dir else None,
                                               "oracle_labels": oracle.path if oracle else None, **(extra or {})})
    fabric.seed_everything(cfg.train.seed, verbose=False)
    student = build_student(data, cfg)
    rows = student_train_rows(data, cfg)
    started = linear_start(student, data, cfg, rows, None, log)
    model = student
    if objective.distils and cfg.distill.feature_kd != "none":
        model = StudentWithProjector(student, targets.embedding.shape[1])
    trains_teacher = getattr(objective, "trains_teacher", False)
    if trains_teacher:  # the Taobao synchronous schedule: the teacher shares the student's trunk
        t_cfg = cfg.model_copy(deep=True)
        t_cfg.teacher.use_privileged = True
        model = SynchronousPair(student, build_teacher(data, t_cfg))
    task = DistillTask(model, objective, teacher, model_takes_privileged=trains_teacher)
    task.prepare(data.labels, data.label_mask, contexts)
    data.release_memory()  # the per-row confidences' temporaries
    result = fit(fabric, task, data, rows, cfg.train, run, resume=resume, desc=f"student[{cfg.distill.method}]",
                 score_start=started and not trains_teacher)
    metrics = {}
    if fabric.is_global_zero:
        metrics = evaluate_student(data, student)
        metrics |= {"role": "student", "method": cfg.distill.method, **fit_summary(result), "train_rows": len(rows)}
        if targets is not None:
            metrics["weights"] = weight_diagnostics(task, data, targets, rows, oracle)
        atomic_write_json(run.metrics_file, metrics)
    fabric.barrier()
    return metrics


def fit_summary(result) -> dict:
    return {"best_epoch": result.best_epoch, "best_val_f1": result.best_score, "best_val_loss": result.best_val_loss,
            "epochs_run": result.epochs_run, "steps_run": result.steps_run, "stopped_early": result.stopped_early,
            "budget": result.budget}


def evaluate_student(data: PreparedData, student) -> dict:
    scored = np.flatnonzero((data.split == "val") | (data.split == "test"))  # thresholds tune on val, metrics on test
    preds = predict(unwrap(student), data, scored, progress="evaluation")
    return {"test": evaluate_logits(data, preds["logits"]), "val": evaluate_logits(data, preds["logits"], "val")}


def evaluate_run(run_dir, data: PreparedData, log: Log = print) -> dict:
    """Score a teacher or student run folder on ``data``'s test split and write its ``eval.json``."""
    run = RunFolder(run_dir)
    if run.role == "teacher":
        metrics = teacher_report(data, teacher_targets(run, data, log))
    else:
        metrics = evaluate_student(data, load_student(run, data))
    atomic_write_json(run.eval_file, metrics)
    return metrics
