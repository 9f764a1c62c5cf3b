"""The ablation protocol of docs/method.md: the same data, budget and seeds for every arm.

Core arms: ``baseline`` (labels only), ``self_distill`` (a teacher *without* privileged features, distilled the
CPFD way: separates "privileged features helped" from "distillation regularises"), ``pfd``, ``cpfd`` and
``teacher`` (upper bound). Options add arms: cross-fitted teacher outputs (``*_oof``), ``cpfd_norm``, other
confidence functions (``cpfd_<name>``), feature distillation (``cpfd_fkd``), PFD and CPFD at other λ
(``pfd_lam<λ>``, ``cpfd_lam<λ>``). When the dataset has unlabelled rows,
``pfd_labelled`` / ``cpfd_labelled`` distil on labelled rows only, so the report shows where the gain comes from.
``cpfd`` is the configured recipe (default: per-scenario reliability against the no-privileged (self) teacher,
which is PFD without a ``group`` column); ``cpfd_true_class`` is the paper's per-row weight beside it. With a
``group`` column and another configured confidence, ``cpfd_scenario`` adds the per-scenario reliability arm.
With hidden labels (``--oracle-labels``), the ``oracle_gate`` control shows the ceiling of any weighting; those
labels reach no other arm's training (only the weight diagnostics, which are evaluation).

Each arm's run folder records the arm (name, teacher, description) in its ``run.json`` and its own resolved
config; :func:`collect` builds ``results.json`` from those folders alone, so ``cpfd compare`` and ``cpfd report``
(seeds run by separate processes into one folder) produce the same file. ``--resume`` keeps the runs an
interrupted compare finished (same data, same config) and trains the rest, so a killed job loses one run at most.
Every comparison is a paired-seed difference with its standard error, and a verdict is printed only at ≥ 2 s.e.
with ≥ 3 seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pydantic import ValidationError

from cpfd.config import ConfigError, DistillConfig, RunConfig, apply_overrides
from cpfd.data.oracle import OracleLabels
from cpfd.data.prepared import PreparedData
from cpfd.errors import CpfdError, UsageError
from cpfd.evaluate import plots
from cpfd.evaluate.metrics import gap_closed
from cpfd.evaluate.references import REFERENCES, reference_metrics
from cpfd.evaluate.report import markdown_report
from cpfd.distill.targets import load_targets
from cpfd.io import atomic_write_json
from cpfd.registry import LOSSES
from cpfd.runs import CompareFolder, RunFolder
from cpfd.train.loop import make_fabric
from cpfd.train.schedule import check_same_data, config_changes, distill, fit_teacher

Log = Callable[[str], None]
MIN_SEEDS_FOR_VERDICT = 3
SIGNIFICANCE_SE = 2.0


@dataclass
class Arm:
    name: str
    teacher: str | None  # which teacher run feeds it: "privileged", "self", "oof" or None
    overrides: dict = field(default_factory=dict)  # on cfg.distill
    description: str = ""
    order: int = 0


@dataclass
class CompareOptions:
    seeds: int = 3
    oof: bool = False
    normalize: bool = False
    confidences: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)  # extra registered losses, one arm each (e.g. wsld)
    feature_kd: str = "none"
    labelled_only_arms: bool | None = None  # None: add them when the dataset has unlabelled rows
    scenario_arms: bool | None = None  # None: add them when the dataset has a group column
    oracle: OracleLabels | None = None  # hidden labels: adds the oracle_gate control
    lams: list[float] = field(default_factory=list)  # other λ: PFD and the configured recipe at each
    variants: dict[str, dict] = field(default_factory=dict)  # arm name -> distill settings over the configured recipe
    resume: bool = False  # keep the runs an interrupted compare finished; run the rest


# The control every arm is measured against: uniform weights on the teacher's own targets, whatever the configured
# recipe adds (a per-scenario target temperature would otherwise leak into it from the run config).
VANILLA_PFD = {"method": "pfd", "target_temperature": "none"}
PAPER_CONFIDENCE = "true_class"


def plan_arms(data: PreparedData, cfg: RunConfig, opts: CompareOptions) -> list[Arm]:
    main = {"method": "cpfd"}
    arms = [
        Arm("baseline", None, {"method": "none"}, "student, labels only"),
        Arm("self_distill", "self", main, "CPFD from a teacher without privileged features (control)"),
        Arm("pfd", "privileged", VANILLA_PFD, "vanilla PFD, uniform weights"),
        Arm("cpfd", "privileged", main, f"CPFD, confidence={cfg.distill.confidence}, {cfg.distill.weighting}"),
    ]
    has_unlabelled = bool((~data.labelled_any & (data.split == "train")).any())
    if opts.labelled_only_arms if opts.labelled_only_arms is not None else has_unlabelled:
        arms += [Arm("pfd_labelled", "privileged", {**VANILLA_PFD, "use_unlabelled": False}, "PFD, labelled rows only"),
                 Arm("cpfd_labelled", "privileged", {**main, "use_unlabelled": False}, "CPFD, labelled rows only")]
    if opts.oof:
        arms += [Arm("pfd_oof", "oof", VANILLA_PFD, "PFD, cross-fitted teacher outputs"),
                 Arm("cpfd_oof", "oof", main, "CPFD, cross-fitted teacher outputs"),
                 Arm("cpfd_fold_variance", "oof", {**main, "confidence": "fold_variance"},
                     "CPFD, weights from fold-teacher disagreement, fold-mean target (UST)")]
    if cfg.distill.confidence != PAPER_CONFIDENCE:  # the paper's per-row weight, beside the configured one
        arms.append(Arm(f"cpfd_{PAPER_CONFIDENCE}", "privileged", {**main, "confidence": PAPER_CONFIDENCE},
                        "CPFD as in the paper: w = the calibrated teacher's probability of the true class"))
    if opts.scenario_arms if opts.scenario_arms is not None else data.groups is not None:
        if cfg.distill.confidence != "scenario_reliability":  # else the cpfd arm is this one
            arms.append(Arm("cpfd_scenario", "privileged", {**main, "confidence": "scenario_reliability"},
                            "CPFD, per-scenario reliability vs the no-privileged teacher"))
        arms.append(Arm("pfd_scenario_temp", "privileged", {"method": "pfd", "target_temperature": "scenario"},
                        "PFD on targets calibrated per scenario (T_g)"))
    if opts.oracle is not None:
        arms.append(Arm("oracle_gate", "privileged", {**main, "confidence": "oracle_gate", "weighting": "kd_only"},
                        "control: weight 1 where the teacher is right (hidden labels), 0 where wrong"))
    if opts.normalize:
        arms.append(Arm("cpfd_norm", "privileged", {**main, "normalize": True}, "CPFD, weights / batch mean"))
    for name in opts.methods:
        loss = LOSSES.get(name)
        source = "privileged" if loss.distils else None  # sync trains its own teacher alongside the student
        arms.append(Arm(name, source, {"method": name}, getattr(loss, "summary", f"distillation loss {name}")))
    for name in opts.confidences:
        if name not in (cfg.distill.confidence, PAPER_CONFIDENCE):
            arms.append(Arm(f"cpfd_{name}", "privileged", {**main, "confidence": name}, f"CPFD, confidence={name}"))
    for lam in opts.lams:  # λ is chosen on validation like any variant (bench/choose_default.py)
        if lam != cfg.distill.lam:
            arms += [Arm(f"pfd_lam{lam:g}", "privileged", {**VANILLA_PFD, "lam": lam}, f"vanilla PFD at λ = {lam:g}"),
                     Arm(f"cpfd_lam{lam:g}", "privileged", {**main, "lam": lam},
                         f"CPFD, confidence={cfg.distill.confidence}, at λ = {lam:g}")]
    for name, overrides in opts.variants.items():
        recipe = {**main, **overrides}
        source = "privileged" if LOSSES.get(recipe["method"]).distils else None
        arms.append(Arm(name, source, recipe, "variant: " + ", ".join(f"{k}={v}" for k, v in overrides.items())))
    if opts.feature_kd != "none":
        arms.append(Arm("cpfd_fkd", "privileged", {**main, "feature_kd": opts.feature_kd},
                        f"CPFD + {opts.feature_kd} feature distillation"))
    arms.append(Arm("teacher", None, {}, "teacher with privileged features (upper bound)"))
    names = [a.name for a in arms] + list(REFERENCES)
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise UsageError(f"arm names used twice: {', '.join(clashes)} (rename the --variant)")
    for k, arm in enumerate(arms):
        arm.order = k
    return arms


def parse_variant(spec: str, cfg: RunConfig) -> tuple[str, dict]:
    """``NAME:key=value,key=value`` -> (arm name, distill settings), checked against the distill schema."""
    name, sep, settings = spec.partition(":")
    name = name.strip()
    if not sep or not name.replace("_", "").replace(".", "").isalnum() or not settings.strip():
        raise UsageError(f"--variant {spec!r}: expected NAME:key=value[,key=value] with NAME of letters, digits, _ "
                         "and . (e.g. cpfd_se0:reliability_se=0)")
    try:
        raw = apply_overrides({}, [item.strip() for item in settings.split(",") if item.strip()])
        DistillConfig.model_validate({**cfg.distill.model_dump(), **raw})
    except (ConfigError, ValidationError) as err:
        raise UsageError(f"--variant {spec!r}: not valid distill settings: {err}") from None
    return name, raw


def run_compare(data: PreparedData, cfg: RunConfig, out_dir: str | Path, opts: CompareOptions,
                log: Log = print) -> dict:
    """Train every arm for every seed, then summarise from the run folders; returns (and writes) ``results.json``."""
    folder = CompareFolder(out_dir)
    arms = plan_arms(data, cfg, opts)
    teacher_arm = next(a for a in arms if a.name == "teacher")
    fabric = make_fabric(cfg.train)
    references = reference_metrics(data) if fabric.is_global_zero else {}
    for s in range(opts.seeds):
        seed = cfg.train.seed + s
        base = cfg.model_copy(deep=True)
        base.train.seed = seed
        teachers: dict[str, Path] = {}
        teachers_kept = True
        for kind in sorted({a.teacher for a in arms if a.teacher} | {"privileged", "self"}):
            t_cfg = base.model_copy(deep=True)
            t_cfg.teacher.use_privileged = kind != "self"
            t_cfg.teacher.fit_reference = False  # the self teacher is every arm's no-privileged reference
            if kind == "self" and t_cfg.teacher.kind == "file":  # the control needs a teacher it can train
                t_cfg.teacher.kind = "neural"
            t_cfg.teacher.oof_folds = max(cfg.teacher.oof_folds, 5) if kind == "oof" else 0
            teachers[kind] = folder.teacher(seed, kind).path
            extra = {"arm": asdict(teacher_arm)} if kind == "privileged" else {"teacher_kind": kind}
            if opts.resume and keep_finished(folder.teacher(seed, kind), t_cfg, data, extra, fabric):
                log(f"[seed {seed}, {s + 1} of {opts.seeds}] teacher ({kind}): kept, finished before")
                continue
            teachers_kept = False
            log(f"[seed {seed}, {s + 1} of {opts.seeds}] teacher ({kind})")
            fit_teacher(data, t_cfg, teachers[kind], fabric, log=log, extra=extra)
        for arm in arms:
            if arm.name == "teacher":
                continue
            a_cfg = base.model_copy(deep=True)
            a_cfg.distill = a_cfg.distill.model_copy(update=arm.overrides)
            step = f"[seed {seed}, {s + 1} of {opts.seeds}] arm {arm.order + 1} of {len(arms) - 1}: {arm.name}"
            # An arm is kept only beside the teachers it was distilled from.
            if opts.resume and teachers_kept and keep_finished(folder.arm(seed, arm.name), a_cfg, data,
                                                               {"arm": asdict(arm)}, fabric):
                log(f"{step}: kept, finished before")
                continue
            log(f"{step}: {arm.description}")
            distill(data, a_cfg, folder.arm(seed, arm.name).path, fabric, teachers.get(arm.teacher), log=log,
                    extra={"arm": asdict(arm)}, reference_dir=teachers["self"], oracle=opts.oracle)
        # Deterministic given the data: fitted once, recorded beside every seed so each seed folder is complete.
        for k, (name, ref) in enumerate(references.items()):
            arm = Arm(name, None, {}, ref["description"], order=len(arms) + k)
            write_reference(folder.arm(seed, name), data, arm, {"test": ref["test"], "val": ref["val"]})
    results = collect(data, folder, seeds=[cfg.train.seed + s for s in range(opts.seeds)])
    atomic_write_json(folder.results_file, results)
    return results


def keep_finished(run: RunFolder, cfg: RunConfig, data: PreparedData, extra: dict, fabric) -> bool:
    """``--resume``: True when ``run`` finished (wrote its metrics) on this data with this config, so it is kept
    (its ``run.json`` takes this comparison's arm entry). An unfinished run is trained again from its start. A
    finished run of other data or another config is an error, never mixed into one comparison."""
    done = run.metrics_file.exists()
    if done:  # every rank reads the same files, so every rank takes the same branch
        check_same_data(run, data)
        changed = config_changes(run.config, cfg, {"train.progress"})
        if changed:
            raise UsageError(f"--resume: {run.path} finished with another config ({', '.join(changed[:5])}); "
                             "compare into a new --out folder, or drop --resume to train every run again")
        if fabric.is_global_zero:
            atomic_write_json(run.run_file, run.info | extra)
    fabric.barrier()
    return done


def write_reference(run: RunFolder, data: PreparedData, arm: Arm, metrics: dict) -> None:
    atomic_write_json(run.run_file, {"role": "reference", "dataset": str(data.root), "arm": asdict(arm),
                                     "skipped_rows": [asdict(row) for row in data.skipped]})
    atomic_write_json(run.metrics_file, {"role": "reference", **metrics})


def collect(data: PreparedData, folder: CompareFolder, seeds: list[int] | None = None) -> dict:
    """``results.json`` from a compare folder's run folders (of ``seeds``, default every ``seed_*`` present): every
    arm that finished on every one of those seeds."""
    per_seed: dict[str, dict[int, dict]] = {}
    arms: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    skipped: list = []
    for seed in seeds if seeds is not None else folder.seeds():
        for run in folder.runs(seed):
            arm = run.info.get("arm")
            if arm is None or not run.metrics_file.exists():
                continue
            arms.setdefault(arm["name"], arm)
            if run.config_file.exists():
                configs.setdefault(arm["name"], run.config.distill.model_dump(mode="json"))
            per_seed.setdefault(arm["name"], {})[seed] = run.metrics()
            skipped = run.info.get("skipped_rows", [])
    if not {"baseline", "teacher"} <= set(arms):
        raise CpfdError(f"{folder.path}: no finished baseline and teacher runs to summarise (run `cpfd compare`)")
    seeds = sorted(set.intersection(*(set(runs) for runs in per_seed.values())))
    if not seeds:
        raise CpfdError(f"{folder.path}: no seed has every arm finished")
    order = sorted(arms, key=lambda name: arms[name]["order"])
    per_seed = {a: {s: per_seed[a][s] for s in seeds} for a in order}
    results = summarise(data, [Arm(**arms[a]) for a in order], per_seed)
    for name in order:
        results["arms"][name]["teacher_source"] = arms[name]["teacher"]
        if name in configs and name != "teacher":
            results["arms"][name]["distill_config"] = configs[name]
    return results | {"dataset_path": str(data.root), "options": {"seeds": len(seeds), "seed_values": seeds},
                      "skipped_rows": skipped}


def _stats(values: list[float]) -> dict:
    arr = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(arr):
        return {"mean": float("nan"), "std": float("nan"), "values": []}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "values": arr.tolist()}


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean and standard error over seeds of ``a_s - b_s``, and the verdict it supports."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    if n < MIN_SEEDS_FOR_VERDICT:
        verdict = "not enough seeds"
    elif abs(mean) >= SIGNIFICANCE_SE * se and mean != 0:
        verdict = "better" if mean > 0 else "worse"
    else:
        verdict = "no difference"
    return {"mean": mean, "se": se, "n": n, "verdict": verdict}


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
            entry["worst_group_f1"] = _stats([min(r["test"]["groups"][g]["mean_f1"] for g in groups)
                                              for r in runs.values()])
        weights = [r["weights"] for r in runs.values() if "weights" in r]
        if weights:
            entry["weights"] = {
                t: {k: _stats([w[t].get(k, float("nan")) for w in weights])["mean"]
                    for k in ("mean_weight", "ess_fraction", "mean_weight_teacher_correct", "mean_weight_teacher_wrong",
                              "kd_mass_teacher_wrong", "teacher_error_rate")}
                for t in tasks}
            for t in tasks:
                by_group = [w[t]["mean_weight_by_group"] for w in weights if "mean_weight_by_group" in w[t]]
                if by_group:
                    entry["weights"][t]["mean_weight_by_group"] = {
                        g: _stats([b.get(g, float("nan")) for b in by_group])["mean"] for g in by_group[0]}
        summary[arm.name] = entry
    seeds = sorted(per_seed["baseline"])

    def series(arm: str) -> list[float]:
        return [per_seed[arm][s]["test"]["mean_f1"] for s in seeds]

    teacher_gap = paired_difference(series("teacher"), series("baseline"))
    gap_is_real = teacher_gap["verdict"] == "better"
    base, teacher = summary["baseline"], summary["teacher"]
    for name, entry in summary.items():
        entry["vs_baseline"] = paired_difference(series(name), series("baseline"))
        if "pfd" in summary:
            entry["vs_pfd"] = paired_difference(series(name), series("pfd"))
        entry["gap_closed"] = {t: gap_closed(entry["f1"][t]["mean"], base["f1"][t]["mean"], teacher["f1"][t]["mean"])
                               for t in tasks}
        per_task = [g for g in entry["gap_closed"].values() if g is not None]
        entry["gap_closed"]["mean_of_tasks"] = float(np.mean(per_task)) if per_task else None
        entry["gap_closed"]["mean_f1"] = (gap_closed(entry["mean_f1"]["mean"], base["mean_f1"]["mean"],
                                                     teacher["mean_f1"]["mean"]) if gap_is_real else None)
    for arm, reference in (("teacher", "logreg_privileged"), ("baseline", "logreg_student")):
        if reference in summary:
            summary[arm]["vs_reference"] = {"reference": reference,
                                            **paired_difference(series(arm), series(reference))}
    teacher_runs = per_seed["teacher"]
    calibration = {t: {k: _stats([float(r["calibration"][t].get(k, 1.0)) for r in teacher_runs.values()])["mean"]
                       for k in ("temperature", "test_ece_before", "test_ece_after", "kept")} for t in tasks}
    if "oracle_gate" in summary and "pfd" in summary:
        headroom = summary["oracle_gate"]["vs_pfd"]
        for name, entry in summary.items():
            if name not in ("oracle_gate", "pfd", "teacher", "baseline") and "vs_pfd" in entry:
                entry["oracle_margin_recovered"] = (entry["vs_pfd"]["mean"] / headroom["mean"]
                                                    if headroom["verdict"] == "better" else None)
    verdict = None
    if "cpfd" in summary and "pfd" in summary:
        verdict = {"cpfd_minus_pfd": summary["cpfd"]["vs_pfd"]["mean"], **summary["cpfd"]["vs_pfd"]}
    return {"dataset": data.name, "tasks": tasks, "arms": summary, "teacher_calibration": calibration,
            "teacher_vs_baseline": teacher_gap, "cpfd_vs_pfd": verdict,
            "per_seed": {a: {str(s): r for s, r in runs.items()} for a, runs in per_seed.items()}}


def write_report(data: PreparedData, results: dict, folder: CompareFolder) -> Path:
    """report.md and its plots beside results.json. Plots from one seed say which."""
    first_seed = min(int(s) for s in results["per_seed"]["teacher"])
    made = {"F1 by arm": plots.f1_by_arm(results, folder.plot("f1_by_arm"))}
    cpfd_weights = results["per_seed"].get("cpfd", {}).get(str(first_seed), {}).get("weights")
    if cpfd_weights:
        made[f"CPFD weight histogram (seed {first_seed})"] = plots.weight_histogram(
            cpfd_weights, folder.plot("cpfd_weights"), title=f"CPFD weights (train rows, seed {first_seed})")
    targets = load_targets(folder.teacher(first_seed, "privileged").teacher_outputs)
    made[f"teacher reliability (seed {first_seed})"] = plots.reliability_diagram(
        data, targets, folder.plot("teacher_reliability"), title_suffix=f"seed {first_seed}")
    return markdown_report(results, folder.report_file, made)
