"""The ablation protocol of docs/method.md: the same data, budget and seeds for every arm.

Core arms: ``baseline`` (labels only), ``self_distill`` (a teacher *without* privileged features, distilled the
CPFD way: separates "privileged features helped" from "distillation regularises"), ``pfd``, ``cpfd`` and
``teacher`` (upper bound). Options add arms: cross-fitted teacher outputs (``*_oof``), ``cpfd_norm``, other
confidence functions (``cpfd_<name>``), feature distillation (``cpfd_fkd``). When the dataset has unlabelled rows,
``pfd_labelled`` / ``cpfd_labelled`` distil on labelled rows only, so the report shows where the gain comes from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cpfd.config import RunConfig
from cpfd.data.prepared import PreparedData
from cpfd.evaluate.metrics import gap_closed
from cpfd.io import atomic_write_json
from cpfd.train.loop import make_fabric
from cpfd.train.schedule import distill, fit_teacher

Log = Callable[[str], None]


@dataclass
class Arm:
    name: str
    teacher: str | None  # which teacher run feeds it: "privileged", "self", "oof" or None
    overrides: dict = field(default_factory=dict)  # on cfg.distill
    description: str = ""


@dataclass
class CompareOptions:
    seeds: int = 3
    oof: bool = False
    normalize: bool = False
    confidences: list[str] = field(default_factory=list)
    feature_kd: str = "none"
    labelled_only_arms: bool | None = None  # None: add them when the dataset has unlabelled rows


def plan_arms(data: PreparedData, cfg: RunConfig, opts: CompareOptions) -> list[Arm]:
    main = {"method": "cpfd"}
    arms = [
        Arm("baseline", None, {"method": "none"}, "student, labels only"),
        Arm("self_distill", "self", main, "CPFD from a teacher without privileged features (control)"),
        Arm("pfd", "privileged", {"method": "pfd"}, "vanilla PFD, uniform weights"),
        Arm("cpfd", "privileged", main, f"CPFD, confidence={cfg.distill.confidence}, {cfg.distill.weighting}"),
    ]
    has_unlabelled = bool((~data.labelled_any & (data.split == "train")).any())
    if opts.labelled_only_arms if opts.labelled_only_arms is not None else has_unlabelled:
        arms += [Arm("pfd_labelled", "privileged", {"method": "pfd", "use_unlabelled": False}, "PFD, labelled rows only"),
                 Arm("cpfd_labelled", "privileged", {**main, "use_unlabelled": False}, "CPFD, labelled rows only")]
    if opts.oof:
        arms += [Arm("pfd_oof", "oof", {"method": "pfd"}, "PFD, cross-fitted teacher outputs"),
                 Arm("cpfd_oof", "oof", main, "CPFD, cross-fitted teacher outputs")]
    if opts.normalize:
        arms.append(Arm("cpfd_norm", "privileged", {**main, "normalize": True}, "CPFD, weights / batch mean"))
    for name in opts.confidences:
        if name != cfg.distill.confidence:
            arms.append(Arm(f"cpfd_{name}", "privileged", {**main, "confidence": name}, f"CPFD, confidence={name}"))
    if opts.feature_kd != "none":
        arms.append(Arm("cpfd_fkd", "privileged", {**main, "feature_kd": opts.feature_kd},
                        f"CPFD + {opts.feature_kd} feature distillation"))
    arms.append(Arm("teacher", None, {}, "teacher with privileged features (upper bound)"))
    return arms


def run_compare(data: PreparedData, cfg: RunConfig, out_dir: str | Path, opts: CompareOptions,
                log: Log = print) -> dict:
    """Train every arm for every seed, then summarise; returns (and writes) ``results.json``."""
    out_dir = Path(out_dir)
    arms = plan_arms(data, cfg, opts)
    fabric = make_fabric(cfg.train)
    per_seed: dict[str, dict[int, dict]] = {a.name: {} for a in arms}
    for s in range(opts.seeds):
        seed = cfg.train.seed + s
        seed_dir = out_dir / f"seed_{seed}"
        base = cfg.model_copy(deep=True)
        base.train.seed = seed
        teachers: dict[str, Path] = {}
        needed = {a.teacher for a in arms if a.teacher} | {"privileged"}
        for kind in sorted(needed):
            t_cfg = base.model_copy(deep=True)
            t_cfg.teacher.use_privileged = kind != "self"
            t_cfg.teacher.oof_folds = max(cfg.teacher.oof_folds, 5) if kind == "oof" else 0
            teachers[kind] = seed_dir / f"teacher_{kind}"
            log(f"[seed {seed}] teacher ({kind})")
            metrics = fit_teacher(data, t_cfg, teachers[kind], fabric, log=log)
            if kind == "privileged":
                per_seed["teacher"][seed] = metrics
        for arm in arms:
            if arm.name == "teacher":
                continue
            a_cfg = base.model_copy(deep=True)
            a_cfg.distill = a_cfg.distill.model_copy(update=arm.overrides)
            log(f"[seed {seed}] {arm.name}: {arm.description}")
            per_seed[arm.name][seed] = distill(data, a_cfg, seed_dir / arm.name, fabric,
                                               teachers.get(arm.teacher), log=log)
    results = summarise(data, arms, per_seed)
    results["dataset_path"] = str(data.root)
    results["skipped_rows"] = [asdict(row) for row in data.skipped]
    results["options"] = {"seeds": opts.seeds, "oof": opts.oof, "normalize": opts.normalize,
                          "confidences": opts.confidences, "feature_kd": opts.feature_kd}
    results["config"] = cfg.model_dump(mode="json")
    atomic_write_json(out_dir / "results.json", results)
    return results


def collect(data: PreparedData, out_dir: str | Path, arms: list[Arm]) -> dict:
    """Rebuild the results from the run folders of a compare folder (``seed_*/<arm>/metrics.json``), e.g. after
    seeds were run by separate processes or machines into the same folder."""
    out_dir = Path(out_dir)
    per_seed: dict[str, dict[int, dict]] = {a.name: {} for a in arms}
    for seed_dir in sorted(out_dir.glob("seed_*"), key=lambda p: int(p.name.split("_")[1])):
        seed = int(seed_dir.name.split("_")[1])
        for arm in arms:
            path = seed_dir / ("teacher_privileged" if arm.name == "teacher" else arm.name) / "metrics.json"
            if path.exists():
                per_seed[arm.name][seed] = json.loads(path.read_text())
    complete = [a.name for a in arms if per_seed[a.name]]
    arms = [a for a in arms if a.name in complete]
    seeds = set.intersection(*(set(per_seed[a.name]) for a in arms))
    per_seed = {a.name: {s: r for s, r in per_seed[a.name].items() if s in seeds} for a in arms}
    return summarise(data, arms, per_seed) | {"options": {"seeds": len(seeds)},
                                              "skipped_rows": [asdict(row) for row in data.skipped]}


def _stats(values: list[float]) -> dict:
    arr = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(arr):
        return {"mean": float("nan"), "std": float("nan"), "values": []}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "values": arr.tolist()}


def summarise(data: PreparedData, arms: list[Arm], per_seed: dict[str, dict[int, dict]]) -> dict:
    tasks = [t.name for t in data.tasks]
    summary: dict = {}
    for arm in arms:
        runs = per_seed[arm.name]
        entry = {"description": arm.description,
                 "f1": {t: _stats([r["test"]["tasks"][t]["f1"] for r in runs.values()]) for t in tasks},
                 "mean_f1": _stats([r["test"]["mean_f1"] for r in runs.values()])}
        if data.groups is not None:
            groups = sorted(next(iter(runs.values()))["test"].get("groups", {}))
            entry["groups"] = {g: _stats([r["test"]["groups"][g]["mean_f1"] for r in runs.values()]) for g in groups}
            entry["group_f1_spread"] = _stats([r["test"]["group_f1_spread"] for r in runs.values()])
        weights = [r["weights"] for r in runs.values() if "weights" in r]
        if weights:
            entry["weights"] = {
                t: {k: _stats([w[t][k] for w in weights])["mean"]
                    for k in ("mean_weight", "ess_fraction", "mean_weight_teacher_correct", "mean_weight_teacher_wrong")}
                for t in tasks}
        summary[arm.name] = entry
    base, teacher = summary["baseline"], summary["teacher"]
    for name, entry in summary.items():
        entry["gap_closed"] = {t: gap_closed(entry["f1"][t]["mean"], base["f1"][t]["mean"], teacher["f1"][t]["mean"])
                               for t in tasks}
        per_task = [g for g in entry["gap_closed"].values() if g is not None]
        entry["gap_closed"]["mean_of_tasks"] = float(np.mean(per_task)) if per_task else None
        entry["gap_closed"]["mean_f1"] = gap_closed(entry["mean_f1"]["mean"], base["mean_f1"]["mean"],
                                                    teacher["mean_f1"]["mean"])
    teacher_runs = per_seed["teacher"]
    calibration = {t: {k: _stats([r["calibration"][t][k] for r in teacher_runs.values()])["mean"]
                       for k in ("temperature", "test_ece_before", "test_ece_after")} for t in tasks}
    verdict = None
    if "cpfd" in summary and "pfd" in summary:
        delta = summary["cpfd"]["mean_f1"]["mean"] - summary["pfd"]["mean_f1"]["mean"]
        verdict = {"cpfd_minus_pfd": delta, "cpfd_beats_pfd": bool(delta > 0)}
    return {"dataset": data.name, "tasks": tasks, "arms": summary, "teacher_calibration": calibration,
            "cpfd_vs_pfd": verdict, "per_seed": {a: {str(s): r for s, r in runs.items()} for a, runs in per_seed.items()}}
