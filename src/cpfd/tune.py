"""Choose the distillation recipe (loss, confidence, λ, τ) on the validation split, never on test.

Optuna's TPE sampler (seeded with ``train.seed``) proposes a recipe; each trial distils one student per seed
(seeds ``train.seed`` … ``train.seed + seeds - 1``, the same for every trial, as the budget is) from the same
teacher and scores the **mean validation F1** over those seeds. Test metrics are computed by every run (the run
folder is a normal student run) but the tuner never reads them: the objective, ``trials.csv`` and ``tune.json``
hold validation numbers only, and ``best.yaml`` is the resolved run config of the best trial, ready for
``cpfd distill --config best.yaml`` or ``cpfd compare --config best.yaml``. Report the chosen recipe's test
numbers with ``cpfd compare`` afterwards, beside every other arm.

Validation also selects each run's checkpoint, so the best validation score is optimistic; it is optimistic in
the same way for every trial, which is what a ranking needs. The study lives in ``<out>/study.db`` (SQLite): a
second call with a larger ``--trials`` continues it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cpfd.config import RunConfig, save_config
from cpfd.data.prepared import PreparedData
from cpfd.distill.context import needs
from cpfd.errors import UsageError
from cpfd.io import atomic_write_json
from cpfd.registry import CONFIDENCES, LOSSES
from cpfd.train.loop import make_fabric
from cpfd.train.schedule import distill

Log = Callable[[str], None]
STUDY_NAME = "cpfd-tune"


@dataclass
class TuneSpace:
    """What a trial may choose. ``confidences`` apply to ``cpfd`` trials; ranges are inclusive."""

    methods: list[str] = field(default_factory=lambda: ["pfd", "cpfd"])
    confidences: list[str] = field(default_factory=list)
    lam: tuple[float, float] = (0.1, 0.9)
    temperature: tuple[float, float] = (1.0, 8.0)
    target_temperatures: list[str] = field(default_factory=lambda: ["none"])

    def check(self) -> None:
        for name in self.methods:
            LOSSES.check(name)
            if not LOSSES.get(name).distils:
                raise UsageError(f"tune: method {name!r} does not distil; nothing to tune")
        for name in self.confidences:
            CONFIDENCES.check(name)
            if needs(CONFIDENCES.get(name)) & {"oracle", "folds"}:
                raise UsageError(f"tune: confidence {name!r} needs hidden labels or fold teachers; it is a control, "
                                 "not a recipe to choose")
        for name, (low, high) in (("lam", self.lam), ("temperature", self.temperature)):
            if not low <= high:
                raise UsageError(f"tune: the {name} range {low}:{high} is empty")
        if not (0 <= self.lam[0] and self.lam[1] <= 1):
            raise UsageError(f"tune: λ must lie in [0, 1], got {self.lam[0]}:{self.lam[1]}")
        if self.temperature[0] <= 0:
            raise UsageError(f"tune: τ must be > 0, got {self.temperature[0]}")


def default_confidences(has_reference: bool) -> list[str]:
    """Every registered confidence a recipe can use: no hidden labels, no fold teachers, a reference only if given."""
    usable = []
    for name in CONFIDENCES.names():
        required = needs(CONFIDENCES.get(name))
        if required & {"oracle", "folds"} or ("reference" in required and not has_reference):
            continue
        usable.append(name)
    return usable


def suggest(trial, space: TuneSpace) -> dict:
    """A trial's overrides of ``cfg.distill``; a parameter with one choice (or an empty range) is fixed, not sampled."""
    def categorical(name, choices):
        return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)

    def uniform(name, bounds, log=False):
        low, high = bounds
        return low if low == high else trial.suggest_float(name, low, high, log=log)

    overrides = {"method": categorical("method", space.methods),
                 "lam": uniform("lam", space.lam),
                 "temperature": uniform("temperature", space.temperature, log=True),
                 "target_temperature": categorical("target_temperature", space.target_temperatures)}
    if overrides["method"] == "cpfd" and space.confidences:
        overrides["confidence"] = categorical("confidence", space.confidences)
    return overrides


def _summary(trial) -> dict:
    scores = [trial.user_attrs[k] for k in sorted(trial.user_attrs) if k.startswith("val_f1_seed_")]
    se = float(np.std(scores, ddof=1) / math.sqrt(len(scores))) if len(scores) > 1 else float("nan")
    return {"trial": trial.number, "val_mean_f1": trial.value, "val_se": se, **trial.user_attrs["distill"],
            **{k: trial.user_attrs[k] for k in sorted(trial.user_attrs) if k.startswith("val_f1_seed_")}}


def run_tune(data: PreparedData, cfg: RunConfig, out_dir: str | Path, teacher_dir: str | Path, space: TuneSpace,
             trials: int, seeds: int = 3, reference_dir: str | Path | None = None, log: Log = print) -> dict:
    """Run (or continue) the study until it holds ``trials`` finished trials; write trials.csv, tune.json, best.yaml."""
    import optuna

    space.check()
    if trials < 1 or seeds < 1:
        raise UsageError("tune: --trials and --seeds must be at least 1")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY_NAME, storage=f"sqlite:///{folder / 'study.db'}",
                                load_if_exists=True, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=cfg.train.seed))
    fabric = make_fabric(cfg.train)
    quiet: Log = lambda _message: None  # noqa: E731  (one line per trial below is the log)

    def objective(trial) -> float:
        overrides = suggest(trial, space)
        trial.set_user_attr("distill", overrides)
        scores = []
        for s in range(seeds):
            seed = cfg.train.seed + s
            t_cfg = cfg.model_copy(deep=True)
            t_cfg.train.seed = seed
            t_cfg.distill = t_cfg.distill.model_copy(update=overrides)
            metrics = distill(data, t_cfg, folder / f"trial_{trial.number:03d}" / f"seed_{seed}", fabric, teacher_dir,
                              log=quiet, force=True, reference_dir=reference_dir, extra={"tune_trial": trial.number})
            scores.append(float(metrics["val"]["mean_f1"]))
            trial.set_user_attr(f"val_f1_seed_{seed}", scores[-1])
        value = float(np.mean(scores))
        done = [t.value for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        best = max(done + [value])
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in overrides.items())
        log(f"trial {trial.number + 1} of {trials}: {shown} -> validation F1 {value:.4f} (best so far {best:.4f})")
        return value

    finished = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(finished) < trials:
        study.optimize(objective, n_trials=trials - len(finished))
    rows = [_summary(t) for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    best = _summary(study.best_trial)
    best_cfg = cfg.model_copy(deep=True)
    best_cfg.distill = best_cfg.distill.model_copy(update=study.best_trial.user_attrs["distill"])
    save_config(best_cfg, folder / "best.yaml")
    _write_trials(folder / "trials.csv", rows)
    result = {"objective": f"mean validation F1 over seeds {cfg.train.seed}..{cfg.train.seed + seeds - 1}",
              "teacher": str(teacher_dir), "reference": str(reference_dir) if reference_dir else None,
              "space": asdict(space), "trials": len(rows), "best": best}
    atomic_write_json(folder / "tune.json", result)
    _plot(rows, folder / "tune_history.png")
    return result


def _write_trials(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _plot(rows: list[dict], path: Path) -> None:
    """Validation F1 per trial (± s.e. over seeds) with the running best, coloured by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for method in sorted({r["method"] for r in rows}):
        sel = [r for r in rows if r["method"] == method]
        ax.errorbar([r["trial"] for r in sel], [r["val_mean_f1"] for r in sel],
                    yerr=[0 if math.isnan(r["val_se"]) else r["val_se"] for r in sel], fmt="o", label=method)
    ordered = sorted(rows, key=lambda r: r["trial"])
    ax.step([r["trial"] for r in ordered], np.maximum.accumulate([r["val_mean_f1"] for r in ordered]),
            where="post", color="grey", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation mean F1 (mean over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
