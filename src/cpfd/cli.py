"""``cpfd``: the command line. Thin: parse arguments, call the API, print.

Every command runs inside one error wrapper: a :class:`~cpfd.errors.CpfdError` (bad data, config, files,
arguments) prints ``error: <message>`` and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from enum import Enum
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from cpfd.config import RunConfig, load_config
from cpfd.errors import CpfdError

app = typer.Typer(
    help="Confidence-aware privileged feature distillation (CPFD): train a teacher on student inputs + privileged "
    "dense features, then distil it into a student that sees only what is available online.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()


class BadMedia(str, Enum):
    fail = "fail"
    skip = "skip"


class Weighting(str, Enum):
    kd_only = "kd_only"
    interpolate = "interpolate"
    gate = "gate"


class FeatureKD(str, Enum):
    none = "none"
    mse = "mse"
    cosine = "cosine"


class TeacherKind(str, Enum):
    neural = "neural"
    lightgbm = "lightgbm"
    logreg = "logreg"
    auto = "auto"
    file = "file"


class Runtime(str, Enum):
    torch = "torch"
    onnx = "onnx"


DatasetArg = Annotated[Path, typer.Argument(help="dataset folder with dataset.yaml (format v1)")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML run config (sections: plugins, "
                                                    "extract, model, teacher, distill, train)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a config value, e.g. --set train.lr=1e-3 "
                                                     "(repeatable)")]
SeedOpt = Annotated[Optional[int], typer.Option(help="random seed (model init, shuffling)")]
EpochsOpt = Annotated[Optional[int], typer.Option(help="maximum epochs (early stopping on validation F1)")]
DevicesOpt = Annotated[Optional[int], typer.Option(help="processes for DDP (CPU: gloo); also works under torchrun")]
BadVideoOpt = Annotated[BadMedia, typer.Option(help="bad or missing video/frames: fail, or skip and list the rows")]
ResumeOpt = Annotated[bool, typer.Option(help="continue an interrupted run from its last checkpoint")]
ForceOpt = Annotated[bool, typer.Option(help="write into a non-empty --out folder that is not a previous run")]


def _version() -> str:
    try:
        return package_version("cpfd")
    except PackageNotFoundError:
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        out.print(f"cpfd {_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                                       help="print the version and exit")] = False) -> None:
    """Confidence-aware privileged feature distillation (CPFD)."""


def command(*args, **kwargs):
    """``app.command`` with the one error wrapper: a CpfdError becomes ``error: ...`` and exit code 2."""

    def decorator(fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            try:
                return fn(*a, **kw)
            except CpfdError as err:
                console.print(f"error: {err}", style="red", highlight=False, markup=False, soft_wrap=True)
                raise typer.Exit(2) from None

        return app.command(*args, **kwargs)(wrapper)

    return decorator


def _log(message: str) -> None:
    console.print(message, highlight=False, markup=False, soft_wrap=True)


def _config(config: Path | None, sets: list[str] | None, **flags) -> RunConfig:
    overrides = list(sets or [])
    for key, value in flags.items():
        if isinstance(value, Enum):
            value = value.value
        if value is not None:
            overrides.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return load_config(config, overrides)


def _load(dataset: Path, on_bad_video: BadMedia = BadMedia.fail, cfg: RunConfig | None = None, extract: bool = True):
    """Validate and load a dataset; video/frames/text go through the frozen encoders (cached) unless ``extract``
    is false (``cpfd validate``)."""
    from cpfd.data import load_dataset

    return load_dataset(dataset, on_bad_video=BadMedia(on_bad_video).value,
                        extract=(cfg or RunConfig()).extract if extract else None, log=_log)


@command()
def validate(
    dataset: DatasetArg,
    on_bad_video: BadVideoOpt = BadMedia.fail,
    decode: Annotated[bool, typer.Option(help="also decode every clip once, so undecodable content is found now")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Check a dataset against the contract (before any compute) and print what it holds."""
    from cpfd.data import load_dataset

    cfg = _config(config, set_)
    data = load_dataset(dataset, on_bad_video=BadMedia(on_bad_video).value, log=_log,
                        decode_check=cfg.extract if decode else None)
    table = Table(title=f"{data.name}: {len(data)} rows, fingerprint {data.fingerprint[:12]}")
    table.add_column("split")
    table.add_column("rows", justify="right")
    for task in data.tasks:
        table.add_column(f"{task.name} ({task.type}, {len(task.classes)} classes)", justify="right")
    for split in ("train", "val", "test"):
        rows = data.split == split
        table.add_row(split, str(int(rows.sum())), *[str(int((data.label_mask[t.name].numpy() & rows).sum()))
                                                     for t in data.tasks])
    out.print(table)
    shapes = {k: tuple(v.shape[1:]) for k, v in data.student_inputs.items()}
    out.print(f"student inputs: {shapes}; privileged columns: {len(data.privileged_names)}; "
              f"unlabelled rows: {int((~data.labelled_any).sum())}; groups: "
              f"{sorted(set(data.groups)) if data.groups is not None else 'none'}", highlight=False)
    for row in data.skipped:
        out.print(f"skipped {row.file} row {row.row} [{row.id}] column {row.column!r}: {row.reason}",
                  highlight=False, markup=False)
    media = data.inputs_spec.get("video") or data.inputs_spec.get("frames")
    unchecked = " (files exist and are not empty; their content was not decoded: add --decode)" if media and not decode else ""
    out.print(f"[green]valid[/]{unchecked}", highlight=False, soft_wrap=True)


@command("fit-teacher")
def fit_teacher_cmd(
    dataset: DatasetArg,
    out_dir: Annotated[Path, typer.Option("--out", help="run folder to write")] = Path("runs/teacher"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    epochs: EpochsOpt = None,
    devices: DevicesOpt = None,
    oof_folds: Annotated[Optional[int], typer.Option(help="K>=2: also train K fold teachers for cross-fitted outputs")] = None,
    no_privileged: Annotated[bool, typer.Option(help="train without privileged features (self-distillation control)")] = False,
    kind: Annotated[Optional[TeacherKind], typer.Option(
        help="neural (DF-X-VLM style), lightgbm or logreg (on student vectors + privileged columns), auto (the "
        "better of neural and logreg on held-out validation log-loss), or file")] = None,
    outputs: Annotated[Optional[Path], typer.Option(
        help="--kind file: parquet of your teacher's per-row logits (id column + logits_<task> columns)")] = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    on_bad_video: BadVideoOpt = BadMedia.fail,
) -> None:
    """Stage 1: train the teacher (student inputs + privileged features), calibrate it, cache its outputs."""
    from cpfd.train.loop import make_fabric
    from cpfd.train.schedule import fit_teacher

    cfg = _config(config, set_, **{"train.seed": seed, "train.epochs": epochs, "train.devices": devices,
                                   "teacher.oof_folds": oof_folds, "teacher.use_privileged": False if no_privileged
                                   else None, "teacher.outputs_file": str(outputs) if outputs else None,
                                   "teacher.kind": kind})
    data = _load(dataset, on_bad_video, cfg)
    fabric = make_fabric(cfg.train)
    metrics = fit_teacher(data, cfg, out_dir, fabric, resume=resume, log=fabric.print, force=force)
    if metrics:
        _print_metrics(metrics, f"teacher {out_dir}")
        console.print(f"wrote {out_dir}/metrics.json", highlight=False)


@command()
def distill(
    dataset: DatasetArg,
    teacher: Annotated[Optional[Path], typer.Option(help="teacher run folder (from fit-teacher)")] = None,
    reference: Annotated[Optional[Path], typer.Option(
        help="a teacher run fitted without privileged features (--set teacher.use_privileged=false), for "
             "confidences that compare against one (scenario_reliability, the default, and reference_agreement); "
             "default: the one fit-teacher fitted into <teacher>/reference on data with a group column")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="run folder to write")] = Path("runs/student"),
    method: Annotated[Optional[str], typer.Option(help="loss registry name: none (baseline), pfd, cpfd, or a "
                                                  "plugin's (see `cpfd list`)")] = None,
    confidence: Annotated[Optional[str], typer.Option(help="confidence registry name for cpfd (see `cpfd list`)")] = None,
    weighting: Annotated[Optional[Weighting], typer.Option(help="how c_i enters the loss")] = None,
    lam: Annotated[Optional[float], typer.Option(help="λ, weight of the distillation term")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="τ, distillation temperature")] = None,
    normalize: Annotated[Optional[bool], typer.Option(help="divide weights by their batch mean")] = None,
    floor: Annotated[Optional[float], typer.Option(help="minimum weight w_min")] = None,
    gate_threshold: Annotated[Optional[float], typer.Option(help="γ for --weighting gate")] = None,
    use_unlabelled: Annotated[Optional[bool], typer.Option(help="distil on rows without labels too")] = None,
    feature_kd: Annotated[Optional[FeatureKD], typer.Option(help="feature distillation of the [CLS] vector")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    epochs: EpochsOpt = None,
    devices: DevicesOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    on_bad_video: BadVideoOpt = BadMedia.fail,
) -> None:
    """Stage 2: train the student from labels (+ the teacher's cached soft labels, weighted by confidence for cpfd)."""
    from cpfd.train.loop import make_fabric
    from cpfd.train.schedule import distill as run_distill

    cfg = _config(config, set_, **{
        "distill.method": method, "distill.confidence": confidence, "distill.weighting": weighting,
        "distill.lam": lam, "distill.temperature": temperature, "distill.normalize": normalize,
        "distill.floor": floor, "distill.gate_threshold": gate_threshold, "distill.use_unlabelled": use_unlabelled,
        "distill.feature_kd": feature_kd, "train.seed": seed, "train.epochs": epochs, "train.devices": devices})
    data = _load(dataset, on_bad_video, cfg)
    fabric = make_fabric(cfg.train)
    metrics = run_distill(data, cfg, out_dir, fabric, teacher, resume=resume, log=fabric.print, force=force,
                          reference_dir=reference)
    if metrics:
        _print_metrics(metrics, f"student {out_dir} ({cfg.distill.method})")
        console.print(f"wrote {out_dir}/metrics.json", highlight=False)


@command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="a run folder (teacher or student)")],
    dataset: Annotated[Optional[Path], typer.Option(help="dataset folder (default: the one the run was trained on)")] = None,
    on_bad_video: BadVideoOpt = BadMedia.fail,
) -> None:
    """Score a trained run on the test split (thresholds tuned on validation) and write eval.json."""
    from cpfd.runs import RunFolder
    from cpfd.train.schedule import evaluate_run

    folder = RunFolder(run)
    data = _load(dataset or Path(folder.info["dataset"]), on_bad_video, folder.config)
    metrics = evaluate_run(folder, data, _log)
    _print_metrics(metrics, f"{folder.role} {run}")
    console.print(f"wrote {folder.eval_file}", highlight=False)


def _names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@command()
def compare(
    dataset: DatasetArg,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for report.md, results.json, plots and every run")] = Path("runs/compare"),
    seeds: Annotated[int, typer.Option(help="seeds per arm (≥3 for a verdict; 5 for reported numbers)")] = 3,
    oof: Annotated[bool, typer.Option(help="add arms distilled from cross-fitted (5-fold) teacher outputs")] = False,
    normalize: Annotated[bool, typer.Option(help="add a CPFD arm with batch-normalised weights")] = False,
    confidences: Annotated[Optional[str], typer.Option(help="comma-separated extra confidence functions, one arm each")] = None,
    methods: Annotated[Optional[str], typer.Option(help="comma-separated extra losses (e.g. wsld), one arm each")] = None,
    feature_kd: Annotated[FeatureKD, typer.Option(help="add a CPFD + feature-distillation arm")] = FeatureKD.none,
    labelled_only: Annotated[Optional[bool], typer.Option(
        help="add PFD/CPFD arms distilled on labelled rows only (default: when the data has unlabelled rows)")] = None,
    scenario: Annotated[Optional[bool], typer.Option(
        help="add the scenario-aware arms cpfd_scenario (per-scenario reliability) and pfd_scenario_temp "
             "(per-scenario target temperature); default: when the data has a group column")] = None,
    oracle_labels: Annotated[Optional[Path], typer.Option(
        help="benchmarks only: a .parquet/.csv with the id column and each task's label column for unlabelled "
             "train rows; adds the oracle_gate control (the ceiling of any weighting). No other arm trains on it")] = None,
    lams: Annotated[Optional[str], typer.Option(
        help="comma-separated other values of λ (e.g. 0.3,0.8): adds PFD and the configured CPFD at each "
             "(pfd_lam<λ>, cpfd_lam<λ>), so λ is compared on validation like any variant")] = None,
    variant: Annotated[Optional[list[str]], typer.Option(
        help="an extra arm: NAME:key=value[,key=value] with distill settings over the configured recipe "
             "(e.g. cpfd_se0:reliability_se=0); repeat for more")] = None,
    resume: Annotated[bool, typer.Option(
        help="keep the teacher and arm runs an interrupted compare into this --out finished (same data, same "
             "config; another config is an error) and train the rest")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    epochs: EpochsOpt = None,
    on_bad_video: BadVideoOpt = BadMedia.fail,
) -> None:
    """Run the honest ablation: baseline, self-distillation control, PFD, CPFD, teacher (+ options) over seeds."""
    from cpfd.compare import CompareOptions, parse_variant, run_compare, write_report
    from cpfd.registry import CONFIDENCES, LOSSES
    from cpfd.runs import CompareFolder

    cfg = _config(config, set_, **{"train.epochs": epochs})
    cfg.train.progress = cfg.train.progress and sys.stderr.isatty()
    extra = _names(confidences)
    for name in extra:
        CONFIDENCES.get(name)
    losses = _names(methods)
    for name in losses:
        LOSSES.get(name)
    try:
        other_lams = [float(v) for v in _names(lams)]
    except ValueError:
        raise typer.BadParameter(f"--lams takes comma-separated numbers, got {lams!r}") from None
    if any(not 0.0 <= v <= 1.0 for v in other_lams):
        raise typer.BadParameter(f"--lams values must lie in [0, 1], got {lams!r}")
    variants = dict(parse_variant(spec, cfg) for spec in variant or [])
    data = _load(dataset, on_bad_video, cfg)
    oracle = None
    if oracle_labels is not None:
        from cpfd.data.oracle import load_oracle_labels

        oracle = load_oracle_labels(oracle_labels, data)
        _log(f"oracle labels: {oracle.rows} train rows from {oracle_labels} (oracle_gate arm and diagnostics only)")
    opts = CompareOptions(seeds=seeds, oof=oof, normalize=normalize, confidences=extra, methods=losses,
                          feature_kd=FeatureKD(feature_kd).value, labelled_only_arms=labelled_only,
                          scenario_arms=scenario, oracle=oracle, lams=other_lams, variants=variants,
                          resume=resume)
    results = run_compare(data, cfg, out_dir, opts, log=_log)
    _show_report(data, results, CompareFolder(out_dir), write_report)


def _show_report(data, results: dict, folder, write_report) -> None:
    from cpfd.evaluate.report import rich_table

    report = write_report(data, results, folder)
    out.print(rich_table(results))
    out.print(f"report: {report}", highlight=False)


@command()
def report(
    compare_dir: Annotated[Path, typer.Argument(help="a compare folder")],
    dataset: Annotated[Optional[Path], typer.Option(help="dataset folder (default: the one the runs used)")] = None,
) -> None:
    """Rebuild results.json, report.md and the plots of a compare folder from its run folders (every seed_*
    folder present, e.g. seeds run in parallel by several processes into the same folder). Each arm is described
    from its own saved run.json and config.yaml."""
    from cpfd.compare import collect, write_report
    from cpfd.io import atomic_write_json
    from cpfd.runs import CompareFolder

    folder = CompareFolder(compare_dir)
    seeds = folder.seeds()
    if not seeds:
        raise typer.BadParameter(f"{compare_dir} has no seed_* folders (run `cpfd compare` first)")
    teacher = folder.teacher(seeds[0], "privileged")
    data = _load(dataset or Path(teacher.info["dataset"]), BadMedia.fail, teacher.config)
    results = collect(data, folder)
    atomic_write_json(folder.results_file, results)
    _show_report(data, results, folder, write_report)


def _range(value: str, name: str) -> tuple[float, float]:
    try:
        low, _, high = value.partition(":")
        return float(low), float(high or low)
    except ValueError:
        raise typer.BadParameter(f"--{name} takes LOW:HIGH (or one value to fix it), got {value!r}") from None


@command()
def tune(
    dataset: DatasetArg,
    teacher: Annotated[Path, typer.Option(help="teacher run folder (from fit-teacher); every trial distils from it")],
    reference: Annotated[Optional[Path], typer.Option(
        help="a teacher run without privileged features; adds the confidences that compare against one")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for study.db, trials.csv, tune.json, best.yaml and "
                                          "every trial's runs (a second call continues the study)")] = Path("runs/tune"),
    trials: Annotated[int, typer.Option(help="finished trials the study should hold")] = 20,
    seeds: Annotated[int, typer.Option(help="seeds per trial, the same for every trial")] = 3,
    methods: Annotated[str, typer.Option(help="comma-separated distilling losses to choose from")] = "pfd,cpfd",
    confidences: Annotated[Optional[str], typer.Option(
        help="comma-separated confidences for cpfd trials (default: every registered one a recipe can use)")] = None,
    lam: Annotated[str, typer.Option(help="λ range LOW:HIGH")] = "0.1:0.9",
    temperature: Annotated[str, typer.Option(help="τ range LOW:HIGH (sampled on a log scale)")] = "1:8",
    target_temperatures: Annotated[Optional[str], typer.Option(
        help="comma-separated distill.target_temperature values (default: none, plus scenario when the data has a "
             "group column)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    on_bad_video: BadVideoOpt = BadMedia.fail,
) -> None:
    """Choose the distillation recipe (loss, confidence, λ, τ) by mean VALIDATION F1 over fixed seeds (Optuna TPE).
    Test metrics are never read; best.yaml is the winning config for `cpfd compare --config` or `cpfd distill`."""
    from cpfd.tune import TuneSpace, default_confidences, run_tune

    cfg = _config(config, set_)
    cfg.train.progress = False  # one line per trial; a bar per run would bury it
    data = _load(dataset, on_bad_video, cfg)
    grouped = data.groups is not None
    space = TuneSpace(methods=_names(methods), confidences=_names(confidences) or default_confidences(reference is not None),
                      lam=_range(lam, "lam"), temperature=_range(temperature, "temperature"),
                      target_temperatures=_names(target_temperatures) or (["none", "scenario"] if grouped else ["none"]))
    result = run_tune(data, cfg, out_dir, teacher, space, trials, seeds, reference_dir=reference, log=_log)
    best = result["best"]
    table = Table(title=f"best of {result['trials']} trials (validation only)")
    for column in ("setting", "value"):
        table.add_column(column)
    for key in ("method", "confidence", "lam", "temperature", "target_temperature"):
        if key in best:
            table.add_row(key, f"{best[key]:.4g}" if isinstance(best[key], float) else str(best[key]))
    table.add_row("validation mean F1", f"{best['val_mean_f1']:.4f} ± {best['val_se']:.4f} (s.e. over seeds)")
    out.print(table)
    out.print(f"wrote {out_dir}/best.yaml; test it beside every arm: cpfd compare {dataset} --config "
              f"{out_dir}/best.yaml", highlight=False)


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise typer.BadParameter(f"--shard takes K/N (e.g. 0/4), not {value!r}") from None
    if not 0 <= k < n:
        raise typer.BadParameter(f"--shard {value}: K must be in 0..N-1")
    return k, n


@command()
def extract(
    dataset: DatasetArg,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    on_bad_video: BadVideoOpt = BadMedia.fail,
    devices: DevicesOpt = None,
    shard: Annotated[Optional[str], typer.Option(
        help="K/N: encode only rows K, K+N, ... into the cache (one of N independent jobs sharing the cache "
             "folder); a final run without --shard builds the store without encoding")] = None,
) -> None:
    """Decode videos/frames and encode frames and text with the frozen encoders into the embedding cache, then
    build the dataset store every later command memory-maps.

    Training commands do this themselves; running it alone warms the cache (resumable if interrupted). With
    --devices N (or under torchrun, on one or many machines sharing the cache folder) each rank encodes its share
    of the rows, and rank 0 builds the store once all shares are in."""
    from cpfd.data import encode_share

    cfg = _config(config, set_, **{"train.devices": devices})
    part = _parse_shard(shard)
    if part is not None:
        n = encode_share(dataset, cfg.extract, *part, on_bad_video=BadMedia(on_bad_video).value, log=_log)
        out.print(f"shard {part[0]}/{part[1]}: {n} rows encoded or found in the cache", highlight=False)
        return
    distributed = cfg.train.devices > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        from cpfd.train.loop import make_fabric

        fabric = make_fabric(cfg.train)
        encode_share(dataset, cfg.extract, fabric.global_rank, fabric.world_size,
                     on_bad_video=BadMedia(on_bad_video).value, log=fabric.print)
        fabric.barrier()
        if not fabric.is_global_zero:
            return
    data = _load(dataset, on_bad_video, cfg)
    shapes = {k: tuple(v.shape) for k, v in data.student_inputs.items()}
    out.print(f"{len(data)} rows ready in {data.store}; student inputs {shapes}; skipped {len(data.skipped)}",
              highlight=False)


@command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the generated dataset and the comparison")] = Path("runs/demo"),
    seeds: Annotated[int, typer.Option(help="seeds per arm")] = 3,
    labelled: Annotated[int, typer.Option(help="labelled clips (split 30/35/35: few train labels, large validation "
                                                "and test splits)")] = 600,
    unlabelled: Annotated[int, typer.Option(help="unlabelled train clips (privileged features only)")] = 300,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The embedded default: generate short videos with titles, privileged history and three tasks, then
    validate -> extract -> fit the teacher on the history table (last quarter's logs) -> compare on today's
    table with that teacher's outputs, and print the table and the path of report.md."""
    from cpfd.config import save_config
    from cpfd.demo import DEMO_SETTINGS, DEMO_SHARES, generate
    from cpfd.runs import RunFolder
    from cpfd.train.teacher_outputs import export_outputs

    data_dir = out_dir / "data"
    if not (data_dir / "history" / "dataset.yaml").exists():
        console.print(f"demo: generating {labelled + unlabelled} clips in {data_dir}", highlight=False)
        generate(data_dir, n_labelled=labelled, n_unlabelled=unlabelled, shares=DEMO_SHARES, history=True)
    validate(data_dir)
    # One embedding cache for both tables: the history table reads the same clips, encoded once.
    settings = DEMO_SETTINGS + [f"extract.cache_dir={data_dir / '.cpfd_cache'}", *(set_ or [])]
    cfg = _config(config, settings)
    save_config(cfg, out_dir / "demo.yaml")
    teacher_dir, outputs = out_dir / "history_teacher", out_dir / "history_teacher_outputs.parquet"
    if not outputs.exists():
        # As in production, the teacher was trained (and early-stopped) when the history was fresh; only its
        # calibration and the scenario weights look at today's validation rows.
        console.print(f"demo: fitting the teacher on the history table {data_dir / 'history'}", highlight=False)
        fit_teacher_cmd(data_dir / "history", out_dir=teacher_dir, config=config, set_=settings, force=True)
        export_outputs(RunFolder(teacher_dir), _load(data_dir, BadMedia.fail, cfg), outputs)
    # The default recipe is already scenario-aware; the variant arms (labelled-only, per-scenario temperature) are
    # left to `cpfd compare` so that the demo stays within 5 minutes on 2 cores.
    compare(data_dir, out_dir=out_dir / "compare", seeds=seeds, oof=False, normalize=False, confidences=None,
            feature_kd=FeatureKD.none, labelled_only=False, scenario=False, variant=None, config=config,
            set_=[*settings, "teacher.kind=file", f"teacher.outputs_file={outputs}"], epochs=None,
            on_bad_video=BadMedia.fail)
    console.print(f"go on with the demo's settings (its store and embeddings are reused, nothing is encoded "
                  f"again): cpfd distill {data_dir} --teacher {teacher_dir} --config {out_dir / 'demo.yaml'} "
                  f"--out runs/student",
                  highlight=False, soft_wrap=True)


@command()
def export(
    run: Annotated[Path, typer.Argument(help="a student run folder (from distill)")],
    out_dir: Annotated[Path, typer.Option("--out", help="bundle folder to write (a new folder or a previous bundle)")] = Path("bundle"),
    dataset: Annotated[Optional[Path], typer.Option(help="dataset for the parity sample (default: the run's)")] = None,
    tolerance: Annotated[float, typer.Option(help="largest |ONNX - torch| allowed")] = 1e-4,
    force: Annotated[bool, typer.Option(help="replace a non-empty --out folder that is not a bundle")] = False,
    on_bad_video: BadVideoOpt = BadMedia.fail,
) -> None:
    """Write a student-only bundle: safetensors, metadata, preprocessing, ONNX (checked against torch)."""
    from cpfd.errors import UsageError
    from cpfd.export.bundle import export_bundle
    from cpfd.models.build import load_student
    from cpfd.runs import RunFolder

    folder = RunFolder(run)
    if folder.role != "student":
        raise UsageError(f"{run} is a {folder.role} run; export a student run (cpfd distill)")
    data = _load(dataset or Path(folder.info["dataset"]), on_bad_video, folder.config)
    meta = export_bundle(folder, out_dir, data, load_student(folder, data), tolerance=tolerance, force=force)
    out.print(f"bundle {out_dir} (version {meta['version']}): inputs {list(meta['inputs'])}; ONNX parity "
              f"max |diff| = {meta['parity_max_abs_diff']:.2e}", highlight=False)


@command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="a bundle folder (from export)")],
    dataset: DatasetArg,
    out_file: Annotated[Path, typer.Option("--out", help="Parquet file of predictions")] = Path("preds.parquet"),
    runtime: Annotated[Runtime, typer.Option(help="inference engine")] = Runtime.torch,
    batch_rows: Annotated[Optional[int], typer.Option(
        help="rows read and scored at a time (bounds memory); default: about 64 MB of decoded inputs a chunk")] = None,
) -> None:
    """Score a dataset with a bundle: per-task probabilities and labels at the tuned thresholds."""
    from cpfd.export.predict import predict_dataset
    from cpfd.export.runtime import StudentBundle

    n = predict_dataset(StudentBundle(bundle, Runtime(runtime).value), dataset, out_file, batch_rows, log=_log,
                        progress=sys.stderr.isatty())
    out.print(f"wrote {n} rows to {out_file}", highlight=False)


@command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="a bundle folder (from export)")],
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    runtime: Annotated[Runtime, typer.Option(help="inference engine")] = Runtime.torch,
    max_upload_mb: Annotated[float, typer.Option(help="largest request body, MiB")] = 50.0,
    max_text_chars: Annotated[int, typer.Option(help="longest text field")] = 5000,
    timeout_s: Annotated[float, typer.Option(help="per-request time limit, body reading included")] = 30.0,
    body_timeout_s: Annotated[float, typer.Option(help="time allowed to receive a request body")] = 15.0,
    decode_workers: Annotated[int, typer.Option(help="video decoding processes")] = 2,
) -> None:
    """Serve the student over HTTP (FastAPI + uvicorn): /healthz, /v1/model, /v1/predict, docs at /docs."""
    import uvicorn

    from cpfd.export.runtime import StudentBundle
    from cpfd.serve.app import Limits, create_app

    limits = Limits(max_upload_bytes=int(max_upload_mb * 2**20), max_text_chars=max_text_chars, timeout_s=timeout_s,
                    body_timeout_s=body_timeout_s, decode_workers=decode_workers)
    uvicorn.run(create_app(StudentBundle(bundle, Runtime(runtime).value), limits), host=host, port=port,
                log_level="info")


@command("list")
def list_registered() -> None:
    """List what is registered and usable by name in YAML and on the command line (plugins included)."""
    from cpfd.registry import CONFIDENCES, ENCODERS, LOSSES, TASK_TYPES, load_plugins

    load_plugins()
    for registry in (CONFIDENCES, LOSSES, ENCODERS, TASK_TYPES):
        out.print(f"{registry.kind}: {', '.join(registry.names())}", highlight=False)


def _print_metrics(metrics: dict, title: str) -> None:
    table = Table(title=f"{title}: test")
    for col in ("task", "F1", "precision", "recall", "ROC-AUC", "PR-AUC", "ECE", "n"):
        table.add_column(col, justify="right" if col != "task" else "left")
    for task, m in metrics["test"]["tasks"].items():
        table.add_row(task, *[f"{m.get(k, float('nan')):.4f}" for k in ("f1", "precision", "recall", "roc_auc",
                                                                         "pr_auc", "ece")], str(m["n"]))
    out.print(table)
    out.print(f"mean F1 {metrics['test']['mean_f1']:.4f}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
