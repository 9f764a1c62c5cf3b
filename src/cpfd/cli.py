"""``cpfd``: the command line. Thin: parse arguments, call the API, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from cpfd.config import ConfigError, RunConfig, load_config
from cpfd.data.contract import DatasetError

app = typer.Typer(
    help="Confidence-aware privileged feature distillation (CPFD): train a teacher on student inputs + privileged "
    "dense features, then distil it into a student that sees only what is available online.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)

DatasetArg = Annotated[Path, typer.Argument(help="dataset folder with dataset.yaml (format v1)")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML run config (sections: model, teacher, distill, train)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a config value, e.g. --set train.lr=1e-3 (repeatable)")]
SeedOpt = Annotated[Optional[int], typer.Option(help="random seed (model init, shuffling)")]
EpochsOpt = Annotated[Optional[int], typer.Option(help="maximum epochs (early stopping on validation F1)")]
DevicesOpt = Annotated[Optional[int], typer.Option(help="processes for DDP (CPU: gloo); also works under torchrun")]
BadVideoOpt = Annotated[str, typer.Option(help="bad or missing video/frames: fail, or skip and list the rows in the report")]


def _fail(err: Exception) -> None:
    console.print(f"error: {err}", style="red", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(2)


def _config(config: Path | None, sets: list[str] | None, **flags) -> RunConfig:
    overrides = list(sets or [])
    for key, value in flags.items():
        if value is not None:
            overrides.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return load_config(config, overrides)


def _load(dataset: Path, on_bad_video: str = "fail", cfg: RunConfig | None = None, extract: bool = True):
    """Validate and load a dataset; video/frames/text go through the frozen encoders (cached) unless ``extract``
    is false (``cpfd validate``)."""
    from cpfd.data import load_dataset

    if on_bad_video not in ("fail", "skip"):
        raise typer.BadParameter("--on-bad-video must be fail or skip")
    log = lambda m: console.print(m, highlight=False, markup=False, soft_wrap=True)  # noqa: E731
    return load_dataset(dataset, on_bad_video=on_bad_video, extract=(cfg or RunConfig()).extract if extract else None,
                        log=log)


@app.command()
def validate(dataset: DatasetArg, on_bad_video: BadVideoOpt = "fail") -> None:
    """Check a dataset against the contract (before any compute) and print what it holds."""
    try:
        data = _load(dataset, on_bad_video, extract=False)
    except DatasetError as err:
        _fail(err)
    table = Table(title=f"{data.name}: {len(data)} rows, fingerprint {data.fingerprint[:12]}")
    table.add_column("split")
    table.add_column("rows", justify="right")
    for task in data.tasks:
        table.add_column(f"{task.name} ({task.type}, {task.n_outputs if task.type != 'binary' else 2} classes)",
                         justify="right")
    for split in ("train", "val", "test"):
        rows = data.split == split
        table.add_row(split, str(int(rows.sum())), *[str(int((data.label_mask[t.name].numpy() & rows).sum()))
                                                     for t in data.tasks])
    Console().print(table)
    unlabelled = int((~data.labelled_any).sum())
    shapes = {k: tuple(v.shape[1:]) for k, v in data.student_inputs.items()}
    Console().print(f"student inputs: {shapes}; privileged columns: {len(data.privileged_names)}; "
                    f"unlabelled rows: {unlabelled}; groups: "
                    f"{sorted(set(data.groups)) if data.groups is not None else 'none'}", highlight=False)
    for row in data.skipped:
        Console().print(f"skipped {row.file} row {row.row} [{row.id}] column {row.column!r}: {row.reason}",
                        highlight=False, markup=False)
    Console().print("[green]valid[/]")


@app.command("fit-teacher")
def fit_teacher_cmd(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option(help="run folder to write")] = Path("runs/teacher"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    epochs: EpochsOpt = None,
    devices: DevicesOpt = None,
    oof_folds: Annotated[Optional[int], typer.Option(help="K>=2: also train K fold teachers for cross-fitted outputs")] = None,
    no_privileged: Annotated[bool, typer.Option(help="train without privileged features (self-distillation control)")] = False,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run from its last checkpoint")] = False,
    on_bad_video: BadVideoOpt = "fail",
) -> None:
    """Stage 1: train the teacher (student inputs + privileged features), calibrate it, cache its outputs."""
    from cpfd.train.loop import make_fabric
    from cpfd.train.schedule import fit_teacher

    try:
        cfg = _config(config, set_, **{"train.seed": seed, "train.epochs": epochs, "train.devices": devices,
                                       "teacher.oof_folds": oof_folds})
        if no_privileged:
            cfg.teacher.use_privileged = False
        data = _load(dataset, on_bad_video, cfg)
        fabric = make_fabric(cfg.train)
        metrics = fit_teacher(data, cfg, out, fabric, resume=resume, log=fabric.print)
    except (DatasetError, ConfigError, ValueError, FileNotFoundError) as err:
        _fail(err)
    if metrics:
        _print_metrics(metrics, f"teacher {out}")
        console.print(f"wrote {out}/metrics.json", highlight=False)


@app.command()
def distill(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option(help="run folder to write")] = Path("runs/student"),
    teacher: Annotated[Optional[Path], typer.Option(help="teacher run folder (from fit-teacher); not needed for --method none")] = None,
    method: Annotated[Optional[str], typer.Option(help="none (baseline) | pfd | cpfd")] = None,
    confidence: Annotated[Optional[str], typer.Option(help="confidence function (see `cpfd list`)")] = None,
    weighting: Annotated[Optional[str], typer.Option(help="kd_only | interpolate | gate")] = None,
    lam: Annotated[Optional[float], typer.Option(help="λ, weight of the distillation term")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="τ, distillation temperature")] = None,
    normalize: Annotated[Optional[bool], typer.Option(help="divide weights by their batch mean")] = None,
    floor: Annotated[Optional[float], typer.Option(help="minimum weight w_min")] = None,
    gate_threshold: Annotated[Optional[float], typer.Option(help="γ for --weighting gate")] = None,
    use_unlabelled: Annotated[Optional[bool], typer.Option(help="distil on rows without labels too")] = None,
    feature_kd: Annotated[Optional[str], typer.Option(help="none | mse | cosine feature distillation")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    epochs: EpochsOpt = None,
    devices: DevicesOpt = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run from its last checkpoint")] = False,
    on_bad_video: BadVideoOpt = "fail",
) -> None:
    """Stage 2: train the student from labels (+ the teacher's cached soft labels, weighted by confidence for cpfd)."""
    from cpfd.train.loop import make_fabric
    from cpfd.train.schedule import distill as run_distill

    try:
        cfg = _config(config, set_, **{
            "distill.method": method, "distill.confidence": confidence, "distill.weighting": weighting,
            "distill.lam": lam, "distill.temperature": temperature, "distill.normalize": normalize,
            "distill.floor": floor, "distill.gate_threshold": gate_threshold, "distill.use_unlabelled": use_unlabelled,
            "distill.feature_kd": feature_kd, "train.seed": seed, "train.epochs": epochs, "train.devices": devices})
        from cpfd.distill.confidence import CONFIDENCES

        CONFIDENCES.get(cfg.distill.confidence)
        data = _load(dataset, on_bad_video, cfg)
        fabric = make_fabric(cfg.train)
        metrics = run_distill(data, cfg, out, fabric, teacher, resume=resume, log=fabric.print)
    except (DatasetError, ConfigError, ValueError, FileNotFoundError, KeyError) as err:
        _fail(err)
    if metrics:
        _print_metrics(metrics, f"student {out} ({cfg.distill.method})")
        console.print(f"wrote {out}/metrics.json", highlight=False)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="a run folder (teacher or student)")],
    dataset: Annotated[Optional[Path], typer.Option(help="dataset folder (default: the one the run was trained on)")] = None,
    on_bad_video: BadVideoOpt = "fail",
) -> None:
    """Score a trained run on the test split (thresholds tuned on validation) and write eval.json."""
    from cpfd.io import atomic_write_json
    from cpfd.train.schedule import evaluate_student, load_student, teacher_report, teacher_targets

    try:
        info = json.loads((run / "run.json").read_text())
        cfg = RunConfig.model_validate(__import__("yaml").safe_load((run / "config.yaml").read_text()))
        data = _load(dataset or Path(info["dataset"]), on_bad_video, cfg)
        if info["role"] == "teacher":
            metrics = teacher_report(data, teacher_targets(run, data, console.print))
        else:
            metrics = evaluate_student(data, load_student(run, data))
    except (DatasetError, ValueError, FileNotFoundError) as err:
        _fail(err)
    atomic_write_json(run / "eval.json", metrics)
    _print_metrics(metrics, f"{info['role']} {run}")
    console.print(f"wrote {run}/eval.json", highlight=False)


@app.command()
def compare(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option(help="folder for report.md, results.json, plots and every run")] = Path("runs/compare"),
    seeds: Annotated[int, typer.Option(help="seeds per arm (≥3; 5 for reported numbers)")] = 3,
    oof: Annotated[bool, typer.Option(help="add arms distilled from cross-fitted (5-fold) teacher outputs")] = False,
    normalize: Annotated[bool, typer.Option(help="add a CPFD arm with batch-normalised weights")] = False,
    confidences: Annotated[Optional[str], typer.Option(help="comma-separated extra confidence functions, one arm each")] = None,
    feature_kd: Annotated[str, typer.Option(help="add a CPFD + feature-distillation arm: mse | cosine")] = "none",
    labelled_only: Annotated[Optional[bool], typer.Option(
        help="add PFD/CPFD arms distilled on labelled rows only (default: when the data has unlabelled rows)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    epochs: EpochsOpt = None,
    on_bad_video: BadVideoOpt = "fail",
) -> None:
    """Run the honest ablation: baseline, self-distillation control, PFD, CPFD, teacher (+ options) over seeds."""
    from cpfd.compare import CompareOptions, run_compare

    try:
        cfg = _config(config, set_, **{"train.epochs": epochs})
        cfg.train.progress = cfg.train.progress and sys.stderr.isatty()
        data = _load(dataset, on_bad_video, cfg)
        opts = CompareOptions(seeds=seeds, oof=oof, normalize=normalize,
                              confidences=[c.strip() for c in (confidences or "").split(",") if c.strip()],
                              feature_kd=feature_kd, labelled_only_arms=labelled_only)
        results = run_compare(data, cfg, out, opts, log=lambda m: console.print(m, highlight=False, markup=False))
    except (DatasetError, ConfigError, ValueError, KeyError) as err:
        _fail(err)
    _write_report(data, results, out)


def _write_report(data, results: dict, out: Path) -> None:
    from cpfd.evaluate import plots
    from cpfd.evaluate.report import markdown_report, rich_table
    from cpfd.train.teacher_outputs import CACHE_NAME, load_targets

    first_seed = min(int(s) for s in results["per_seed"]["teacher"])
    made = {"F1 by arm": plots.f1_by_arm(results, out / "f1_by_arm.png")}
    cpfd_weights = results["per_seed"].get("cpfd", {}).get(str(first_seed), {}).get("weights")
    if cpfd_weights:
        made["CPFD weight histogram"] = plots.weight_histogram(cpfd_weights, out / "cpfd_weights.png")
    targets = load_targets(out / f"seed_{first_seed}" / "teacher_privileged" / "cache" / CACHE_NAME)
    made["teacher reliability"] = plots.reliability_diagram(data, targets, out / "teacher_reliability.png")
    report = markdown_report(results, out / "report.md", made)
    Console().print(rich_table(results))
    Console().print(f"report: {report}", highlight=False)


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="a compare folder")],
    dataset: Annotated[Optional[Path], typer.Option(help="dataset folder (default: the one in results.json)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Rebuild results.json, report.md and the plots of a compare folder from its run folders (every seed_*
    folder present, e.g. seeds run in parallel by several processes into the same folder)."""
    from cpfd.compare import CompareOptions, collect, plan_arms
    from cpfd.io import atomic_write_json

    try:
        previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
        cfg = _config(config, set_)
        data = _load(dataset or Path(previous["dataset_path"]), "fail", cfg)
        from cpfd.distill.confidence import CONFIDENCES

        # Every arm the options can add; collect() keeps those that have run folders.
        run_names = {p.name for p in out.glob("seed_*/*")}
        extra = [n.removeprefix("cpfd_") for n in run_names if n.startswith("cpfd_") and n[5:] in CONFIDENCES]
        opts = CompareOptions(oof=True, normalize=True, confidences=extra, feature_kd="mse", labelled_only_arms=True)
        arms = plan_arms(data, cfg, opts)
        results = collect(data, out, arms) | {"dataset_path": str(data.root)}
    except (DatasetError, ConfigError, ValueError, KeyError) as err:
        _fail(err)
    atomic_write_json(out / "results.json", results)
    _write_report(data, results, out)


@app.command()
def extract(
    dataset: DatasetArg,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    on_bad_video: BadVideoOpt = "fail",
) -> None:
    """Decode videos/frames and encode frames and text with the frozen encoders into the embedding cache.

    Training commands do this themselves; running it alone warms the cache (resumable if interrupted)."""
    try:
        cfg = _config(config, set_)
        data = _load(dataset, on_bad_video, cfg)
    except (DatasetError, ConfigError, ValueError) as err:
        _fail(err)
    shapes = {k: tuple(v.shape) for k, v in data.student_inputs.items()}
    Console().print(f"{len(data)} rows ready; student inputs {shapes}; skipped {len(data.skipped)}", highlight=False)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="folder for the generated dataset and the comparison")] = Path("runs/demo"),
    seeds: Annotated[int, typer.Option(help="seeds per arm")] = 3,
    labelled: Annotated[int, typer.Option(help="labelled clips (split 60/20/20)")] = 300,
    unlabelled: Annotated[int, typer.Option(help="unlabelled train clips (privileged features only)")] = 300,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The embedded default: generate short videos with titles, privileged history and three tasks, then
    validate -> extract -> compare, and print the table and the path of report.md."""
    from cpfd.demo import generate

    data_dir = out / "data"
    if not (data_dir / "dataset.yaml").exists():
        console.print(f"demo: generating {labelled + unlabelled} clips in {data_dir}", highlight=False)
        generate(data_dir, n_labelled=labelled, n_unlabelled=unlabelled)
    # Sized for a few hundred clips on 2 CPU cores: small frames, short titles, small batches so that each epoch
    # has several optimiser steps. The same settings for every arm.
    defaults = ["extract.sampling.num_frames=4", "extract.sampling.size=112", "extract.workers=1",
                "extract.max_tokens=16", "train.batch_size=64", "train.epochs=30", "train.patience=6"]
    validate(data_dir)
    compare(data_dir, out=out / "compare", seeds=seeds, oof=False, normalize=False, confidences=None,
            feature_kd="none", labelled_only=False, config=config, set_=defaults + list(set_ or []), epochs=None,
            on_bad_video="fail")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="a student run folder (from distill)")],
    out: Annotated[Path, typer.Option(help="bundle folder to write")] = Path("bundle"),
    dataset: Annotated[Optional[Path], typer.Option(help="dataset for the parity sample (default: the run's)")] = None,
    tolerance: Annotated[float, typer.Option(help="largest |ONNX - torch| allowed")] = 1e-4,
    on_bad_video: BadVideoOpt = "fail",
) -> None:
    """Write a student-only bundle: safetensors, metadata, preprocessing, ONNX (checked against torch)."""
    from cpfd.export.bundle import ExportError, export_bundle
    from cpfd.train.schedule import load_student

    try:
        info = json.loads((run / "run.json").read_text())
        if info["role"] != "student":
            raise ValueError(f"{run} is a {info['role']} run; export a student run (cpfd distill)")
        cfg = RunConfig.model_validate(__import__("yaml").safe_load((run / "config.yaml").read_text()))
        data = _load(dataset or Path(info["dataset"]), on_bad_video, cfg)
        meta = export_bundle(run, out, data, load_student(run, data), tolerance=tolerance)
    except (DatasetError, ValueError, FileNotFoundError, ExportError) as err:
        _fail(err)
    Console().print(f"bundle {out} (version {meta['version']}): inputs {list(meta['inputs'])}; ONNX parity "
                    f"max |diff| = {meta['parity_max_abs_diff']:.2e}", highlight=False)


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="a bundle folder (from export)")],
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option(help="Parquet file of predictions")] = Path("preds.parquet"),
    runtime: Annotated[str, typer.Option(help="torch | onnx")] = "torch",
    batch_rows: Annotated[int, typer.Option(help="rows read and scored at a time (bounds memory)")] = 256,
) -> None:
    """Score a dataset with a bundle: per-task probabilities and labels at the tuned thresholds."""
    from cpfd.export.predict import predict_dataset
    from cpfd.export.runtime import StudentBundle

    try:
        n = predict_dataset(StudentBundle(bundle, runtime), dataset, out, batch_rows,
                            log=lambda m: console.print(m, highlight=False, markup=False, soft_wrap=True),
                            progress=sys.stderr.isatty())
    except (DatasetError, ValueError, FileNotFoundError) as err:
        _fail(err)
    Console().print(f"wrote {n} rows to {out}", highlight=False)


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="a bundle folder (from export)")],
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    runtime: Annotated[str, typer.Option(help="torch | onnx")] = "torch",
    max_upload_mb: Annotated[float, typer.Option(help="largest request body, MiB")] = 50.0,
    max_text_chars: Annotated[int, typer.Option(help="longest text field")] = 5000,
    timeout_s: Annotated[float, typer.Option(help="per-request time limit")] = 30.0,
) -> None:
    """Serve the student over HTTP (FastAPI + uvicorn): /healthz, /v1/model, /v1/predict, docs at /docs."""
    import uvicorn

    from cpfd.export.runtime import StudentBundle
    from cpfd.serve.app import Limits, create_app

    limits = Limits(max_upload_bytes=int(max_upload_mb * 2**20), max_text_chars=max_text_chars, timeout_s=timeout_s)
    uvicorn.run(create_app(StudentBundle(bundle, runtime), limits), host=host, port=port, log_level="info")


@app.command("list")
def list_registered() -> None:
    """List the registered confidence functions and losses (usable by name in YAML and on the command line)."""
    from cpfd.distill.confidence import CONFIDENCES
    from cpfd.distill.losses import LOSSES
    from cpfd.encoders import ENCODERS

    for registry in (CONFIDENCES, LOSSES, ENCODERS):
        Console().print(f"{registry.kind}: {', '.join(registry.names())}", highlight=False)


def _print_metrics(metrics: dict, title: str) -> None:
    table = Table(title=f"{title}: test")
    for col in ("task", "F1", "precision", "recall", "ROC-AUC", "PR-AUC", "ECE", "n"):
        table.add_column(col, justify="right" if col != "task" else "left")
    for task, m in metrics["test"]["tasks"].items():
        table.add_row(task, *[f"{m.get(k, float('nan')):.4f}" for k in ("f1", "precision", "recall", "roc_auc",
                                                                         "pr_auc", "ece")], str(m["n"]))
    Console().print(table)
    Console().print(f"mean F1 {metrics['test']['mean_f1']:.4f}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
