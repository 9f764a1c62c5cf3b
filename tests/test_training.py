"""The two-stage schedule end to end on a small synthetic dataset: determinism, resume, the teacher-output cache,
unlabelled rows, cross-fitting, and DDP with two CPU processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cpfd.config import load_config
from cpfd.data import load_dataset
from cpfd.distill.calibration import MIN_CALIBRATION_ROWS
from cpfd.evaluate.evaluation import evaluate_logits
from cpfd.train.loop import make_fabric
from conftest import make_dataset
from cpfd.runs import TEACHER_OUTPUTS as CACHE_NAME
from cpfd.train.schedule import distill, fit_teacher, student_train_rows
from cpfd.train.teacher_outputs import teacher_targets

FAST = ["train.epochs=3", "train.min_steps=0", "train.patience_steps=100000", "train.progress=false", "model.d_model=32", "train.batch_size=64"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fitted")
    data = load_dataset(make_dataset(root / "ds", n=200, n_unlabelled=100))
    # The network's mechanics (determinism, resume, output cache keys, online outputs); `auto` has its own tests.
    cfg = load_config(overrides=[*FAST, "teacher.kind=neural"])
    fabric = make_fabric(cfg.train)
    fit_teacher(data, cfg, root / "teacher", fabric)
    return root, data, cfg, fabric


def _test_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["test"]


def test_same_seed_gives_identical_metrics_and_weights(fitted):
    root, data, cfg, fabric = fitted
    for name in ("a", "b"):
        distill(data, cfg, root / f"det_{name}", fabric, root / "teacher")
    assert _test_metrics(root / "det_a") == _test_metrics(root / "det_b")
    wa, wb = (load_file(str(root / f"det_{n}" / "checkpoints" / "best.safetensors")) for n in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    other = cfg.model_copy(deep=True)
    other.train.seed = 1
    distill(data, other, root / "det_c", fabric, root / "teacher")
    assert _test_metrics(root / "det_c") != _test_metrics(root / "det_a")


def test_resume_continues_to_the_same_result(fitted):
    root, data, cfg, fabric = fitted
    full = cfg.model_copy(deep=True)
    full.train.epochs = 4
    # A shorter run stands in for an interrupted one; a constant rate keeps its plan identical to the full run's.
    full.train.schedule = "constant"
    distill(data, full, root / "straight", fabric, root / "teacher")
    short = full.model_copy(deep=True)
    short.train.epochs = 2
    distill(data, short, root / "resumed", fabric, root / "teacher")
    history = json.loads((root / "resumed" / "history.json").read_text())["epochs"]
    assert len(history) == 2
    distill(data, full, root / "resumed", fabric, root / "teacher", resume=True)
    history = json.loads((root / "resumed" / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    a = load_file(str(root / "straight" / "checkpoints" / "last.safetensors"))
    b = load_file(str(root / "resumed" / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_folder_contents(fitted):
    root, data, cfg, fabric = fitted
    cfg = cfg.model_copy(deep=True)
    cfg.distill.confidence = "true_class"  # a per-row weight, so the diagnostics can tell right from wrong rows
    distill(data, cfg, root / "contents", fabric, root / "teacher")
    run = root / "contents"
    for name in ("config.yaml", "run.json", "metrics.json", "history.json", "checkpoints/best.safetensors",
                 "checkpoints/last_state.safetensors"):
        assert (run / name).exists(), name
    assert list((run / "logs" / "csv").rglob("metrics.csv")) and list((run / "logs" / "tensorboard").rglob("events.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    w = metrics["weights"]["spam"]
    assert 0 < w["ess_fraction"] <= 1 and sum(w["histogram"]["counts"]) == metrics["train_rows"]
    assert w["mean_weight_teacher_wrong"] < w["mean_weight_teacher_correct"]
    assert set(metrics["test"]["groups"]) == {"feed", "search"}
    teacher = json.loads((root / "teacher" / "metrics.json").read_text())
    assert set(teacher["calibration"]["spam"]) >= {"temperature", "test_ece_before", "test_ece_after", "kept",
                                                   "heldout_nll_before", "heldout_nll_after",
                                                   "heldout_ece_before", "heldout_ece_after"}
    c = teacher["calibration"]["spam"]
    # Kept only with enough rows, something fitted (not all rows right) and a lower held-out NLL and ECE
    # (choose_temperature).
    helps = c["heldout_nll_after"] < c["heldout_nll_before"] and c["heldout_ece_after"] < c["heldout_ece_before"]
    assert c["kept"] == (c["rows"] >= MIN_CALIBRATION_ROWS and c["fitted"] != 1.0 and helps)
    assert c["kept"] or c["temperature"] == 1.0


def test_unlabelled_rows_are_distilled_but_not_in_the_baseline(fitted):
    _, data, cfg, _ = fitted
    base = cfg.model_copy(deep=True)
    base.distill.method = "none"
    assert len(student_train_rows(data, base)) == 120
    assert len(student_train_rows(data, cfg)) == 220
    labelled_only = cfg.model_copy(deep=True)
    labelled_only.distill.use_unlabelled = False
    assert len(student_train_rows(data, labelled_only)) == 120


def test_stale_teacher_cache_is_detected_and_rebuilt(fitted, tmp_path):
    root, data, cfg, fabric = fitted
    messages: list[str] = []
    original = teacher_targets(root / "teacher", data, messages.append)
    assert messages == []  # built by fit_teacher, reused as is
    refit = cfg.model_copy(deep=True)
    refit.train.seed = 7
    fit_teacher(data, refit, tmp_path / "teacher", fabric)
    # Another teacher's cache in this folder: the key (checkpoint hash) no longer matches.
    shutil.copy(root / "teacher" / "cache" / CACHE_NAME, tmp_path / "teacher" / "cache" / CACHE_NAME)
    rebuilt = teacher_targets(tmp_path / "teacher", data, messages.append)
    assert len(messages) == 1 and "is stale" in messages[0] and "rebuilding" in messages[0]
    assert not torch.equal(original.logits["spam"], rebuilt.logits["spam"])
    messages.clear()
    teacher_targets(tmp_path / "teacher", data, messages.append)
    assert messages == []
    # The same teacher on changed data: the dataset fingerprint no longer matches.
    changed = load_dataset(make_dataset(tmp_path / "ds2", n=200, n_unlabelled=100, seed=3))
    teacher_targets(tmp_path / "teacher", changed, messages.append)
    assert len(messages) == 1 and "is stale" in messages[0]


def test_cross_fitted_teacher_outputs(fitted, tmp_path):
    root, data, cfg, fabric = fitted
    oof = cfg.model_copy(deep=True)
    oof.teacher.oof_folds = 2
    fit_teacher(data, oof, tmp_path / "oof", fabric)
    folds = json.loads((tmp_path / "oof" / "folds" / "folds.json").read_text())
    assert sorted(sum(folds, [])) == sorted(data.ids[data.indices("train", labelled_only=True)].tolist())
    in_sample = teacher_targets(root / "teacher", data)
    cross = teacher_targets(tmp_path / "oof", data)
    train_rows = data.indices("train", labelled_only=True)
    val_rows = data.indices("val")
    assert torch.equal(in_sample.logits["spam"][val_rows], cross.logits["spam"][val_rows])
    assert not torch.allclose(in_sample.logits["spam"][train_rows], cross.logits["spam"][train_rows])


def test_online_teacher_matches_cached_teacher(fitted):
    root, data, cfg, fabric = fitted
    online = cfg.model_copy(deep=True)
    online.distill.teacher_outputs = "online"
    distill(data, online, root / "online", fabric, root / "teacher")
    distill(data, cfg, root / "cached", fabric, root / "teacher")
    a, b = _test_metrics(root / "online"), _test_metrics(root / "cached")
    assert a["mean_f1"] == pytest.approx(b["mean_f1"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["fabric", "torchrun"])
def test_ddp_two_cpu_processes(tmp_path, launcher):
    ds = make_dataset(tmp_path / "ds", n=200)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    # 120 train rows: 2 ranks x 60 rows in batches of 30, i.e. a global batch of 60 and 2 steps per epoch.
    args = ["distill", str(ds), "--method", "none", "--out", str(tmp_path / "ddp"), "--epochs", "8",
            "--set", "train.progress=false", "--set", "train.min_steps=0", "--set", "train.lr=0.01",
            "--set", "train.min_batches_per_epoch=2", "--set", "train.patience_steps=1000"]
    if launcher == "fabric":
        cmd = [sys.executable, "-m", "cpfd", *args, "--set", "train.batch_size=30", "--devices", "2"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "cpfd", *args,
               "--set", "train.batch_size=30"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert history["world_size"] == 2
    assert len(set(history["rank_weight_checksums"])) == 1 and len(history["rank_weight_checksums"]) == 2
    losses = [h["train/loss"] for h in history["epochs"]]
    assert losses[-1] < losses[0]
    assert np.isfinite(json.loads((tmp_path / "ddp" / "metrics.json").read_text())["test"]["mean_f1"])
    # The same run in one process (same global batch, rows from the same memory-mapped store): the validation
    # loss curve matches within tolerance (the row order differs, so not exactly).
    single = [a.replace(str(tmp_path / "ddp"), str(tmp_path / "single")) for a in args]
    proc = subprocess.run([sys.executable, "-m", "cpfd", *single, "--set", "train.batch_size=60"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "single" / "history.json").read_text())
    assert history["budget"]["steps_per_epoch"] == one["budget"]["steps_per_epoch"] == 2
    ddp_val = np.array([h["val/loss"] for h in history["epochs"]])
    one_val = np.array([h["val/loss"] for h in one["epochs"]])
    assert len(ddp_val) == len(one_val) == 8
    assert one_val[0] - one_val.min() > 0.05, "the curve must move for the comparison to mean anything"
    np.testing.assert_allclose(ddp_val, one_val, rtol=0.1)


def test_budget_rule_by_hand():
    from cpfd.config import TrainConfig
    from cpfd.train.budget import plan_budget

    # 325 rows, batch 256: capped to max(8, ceil(325/16)) = 21 → ceil(325/21) = 16 steps per epoch; 30 epochs are
    # 480 steps < 1000, so ceil(1000/16) = 63 epochs = 1008 steps; warm-up round(0.05·1008) = 50 steps.
    b = plan_budget(TrainConfig(batch_size=256, epochs=30, min_steps=1000), 325)
    assert (b.batch_size, b.steps_per_epoch, b.epochs, b.total_steps, b.warmup_steps) == (21, 16, 63, 1008, 50)
    assert b.lr_factor(0, "cosine") == pytest.approx(1 / 50) and b.lr_factor(49, "cosine") == pytest.approx(1.0)
    assert b.lr_factor(50 + 479, "cosine") == pytest.approx(0.5) and b.lr_factor(1008, "cosine") == pytest.approx(0.0)
    assert b.lr_factor(700, "constant") == 1.0
    # A large table keeps the configured batch and epochs; two processes halve the rows per rank.
    big = plan_budget(TrainConfig(batch_size=256, epochs=30, min_steps=1000), 60000, world_size=2)
    assert (big.batch_size, big.steps_per_epoch, big.epochs) == (256, 118, 30)


def test_early_stopping_on_validation_loss_restores_the_best_checkpoint(fitted):
    root, data, cfg, fabric = fitted
    es = cfg.model_copy(deep=True)
    es.distill.method = "none"
    es.train.epochs, es.train.patience_steps = 60, 1
    rows = data.indices("train", labelled_only=True)
    es.train.min_steps = 3 * plan_budget_steps(es, len(rows))
    distill(data, es, root / "early", fabric)
    history = json.loads((root / "early" / "history.json").read_text())["epochs"]
    metrics = json.loads((root / "early" / "metrics.json").read_text())
    assert 3 <= len(history) < 60 and metrics["stopped_early"]
    losses = [h["val/loss"] for h in history]
    assert metrics["best_val_loss"] == pytest.approx(min(losses)) and losses[-1] > min(losses)
    assert metrics["steps_run"] >= es.train.min_steps


def plan_budget_steps(cfg, n_train: int) -> int:
    from cpfd.train.budget import plan_budget

    return plan_budget(cfg.train, n_train).steps_per_epoch


def test_lightgbm_teacher_gives_cached_outputs_a_student_distils_from(fitted, tmp_path):
    _, data, cfg, fabric = fitted
    gbdt = cfg.model_copy(deep=True)
    gbdt.teacher.kind = "lightgbm"
    metrics = fit_teacher(data, gbdt, tmp_path / "gbdt", fabric)
    assert metrics["kind"] == "lightgbm" and metrics["test"]["mean_f1"] > 0.5
    targets = teacher_targets(tmp_path / "gbdt", data)
    assert targets.logits["category"].shape == (len(data), 3) and targets.logits["tags"].shape == (len(data), 2)
    student = distill(data, cfg, tmp_path / "student", fabric, tmp_path / "gbdt")
    assert np.isfinite(student["test"]["mean_f1"]) and student["weights"]["spam"]["mean_weight"] > 0
    # cross-fitted: fold boosters overwrite their held-out rows, val rows keep the full model's outputs
    gbdt.teacher.oof_folds = 2
    fit_teacher(data, gbdt, tmp_path / "gbdt_oof", fabric)
    oof = teacher_targets(tmp_path / "gbdt_oof", data)
    train, val = data.indices("train", labelled_only=True), data.indices("val")
    assert torch.equal(oof.logits["spam"][val], targets.logits["spam"][val])
    assert not torch.allclose(oof.logits["spam"][train], targets.logits["spam"][train])


def test_logreg_teacher_is_the_privileged_reference(fitted, tmp_path, monkeypatch):
    """With the whole validation split to choose C on (calibration_share 0), the logreg teacher's logits are the
    logreg_privileged reference's, on every task kind (binary, multiclass, multilabel), whether the table is read
    in one piece or in pieces of 7 rows (as a big table is, ``CHUNK_ROWS`` at a time)."""
    from cpfd.evaluate import references
    from cpfd.evaluate.references import privileged_fill, privileged_matrix, reference_logits, student_matrix
    from cpfd.train import teacher_kinds

    _, data, cfg, fabric = fitted
    linear = cfg.model_copy(deep=True)
    linear.teacher = linear.teacher.model_copy(update={"kind": "logreg", "calibration_share": 0.0})
    x = np.concatenate([student_matrix(data), privileged_matrix(data, privileged_fill(data, data.indices("train")))],
                       axis=1)
    expected = reference_logits(data, x)
    for chunk in (references.CHUNK_ROWS, 7):
        monkeypatch.setattr(references, "CHUNK_ROWS", chunk)
        monkeypatch.setattr(teacher_kinds, "CHUNK_ROWS", chunk)
        fit_teacher(data, linear, tmp_path / f"logreg_{chunk}", fabric)
        targets = teacher_targets(tmp_path / f"logreg_{chunk}", data)
        for task in data.tasks:
            assert torch.allclose(targets.logits[task.name], expected[task.name], atol=1e-4), (chunk, task.name)


def test_auto_teacher_keeps_the_kind_with_the_lower_calibration_log_loss(fitted, tmp_path):
    from cpfd.distill.calibration import temperature_nll
    from cpfd.runs import RunFolder
    from cpfd.train.teacher_kinds import logreg_outputs

    _, data, cfg, fabric = fitted
    auto = cfg.model_copy(deep=True)
    auto.teacher.kind = "auto"
    metrics = fit_teacher(data, auto, tmp_path / "auto", fabric)
    run = RunFolder(tmp_path / "auto")
    choice = json.loads(run.teacher_choice_file.read_text())
    calib = data.calibration_rows(auto.teacher.calibration_share)
    assert choice["rows"] == calib.sum() and not (calib & (data.split != "val")).any()
    linear = logreg_outputs(run.logreg_model, data)[0]
    by_hand = 0.0
    for task in data.tasks:
        rows = np.flatnonzero(calib & data.label_mask[task.name].numpy())
        by_hand += temperature_nll(linear[task.name][rows], data.labels[task.name][rows], task.kind, 1.0)
    assert choice["calibration_nll"]["logreg"] == pytest.approx(by_hand)
    nll = choice["calibration_nll"]
    assert choice["kind"] == ("logreg" if nll["logreg"] < nll["neural"] else "neural") == metrics["chosen"]
    # Training numbers at the top level are the kept teacher's: the network's only when the network is kept.
    assert ("best_val_f1" in metrics) == (choice["kind"] == "neural") != ("neural_fit" in metrics)
    chosen = linear if choice["kind"] == "logreg" else teacher_targets(tmp_path / "auto", data).logits
    assert all(torch.equal(teacher_targets(tmp_path / "auto", data).logits[t], chosen[t]) for t in chosen)
    # Whatever the kind, the kept teacher is scored on validation like a student, from its own logits.
    val = evaluate_logits(data, chosen, "val")
    assert metrics["val"]["mean_f1"] == pytest.approx(val["mean_f1"])
    assert metrics["val"]["tasks"].keys() == val["tasks"].keys()
    assert run.teacher_checkpoints() == [run.teacher_model(choice["kind"])]


def test_bring_your_own_teacher_outputs_are_validated_and_cached(fitted, tmp_path):
    from cpfd.data import DatasetError
    from cpfd.runs import RunFolder
    from cpfd.train.teacher_kinds import outputs_frame
    from cpfd.train.teacher_outputs import export_outputs

    root, data, cfg, fabric = fitted
    reference = teacher_targets(root / "teacher", data)
    frame = outputs_frame(list(data.ids), {t: z.numpy() for t, z in reference.logits.items()}, "video_id")
    frame.to_parquet(tmp_path / "mine.parquet")
    # export_outputs writes the same table from the run folder (a teacher fitted on history, applied to today).
    exported = pd.read_parquet(export_outputs(RunFolder(root / "teacher"), data, tmp_path / "exported.parquet"))
    assert exported["video_id"].tolist() == frame["video_id"].tolist()
    for column in [c for c in frame if c.startswith("logits_")]:
        assert np.allclose(np.stack(exported[column].map(np.atleast_1d)), np.stack(frame[column].map(np.atleast_1d)),
                           atol=1e-6), column
    own = cfg.model_copy(deep=True)
    own.teacher = own.teacher.model_copy(update={"kind": "file", "outputs_file": str(tmp_path / "mine.parquet")})
    fit_teacher(data, own, tmp_path / "own", fabric)
    targets = teacher_targets(tmp_path / "own", data)
    assert all(torch.allclose(targets.logits[t], reference.logits[t]) for t in reference.logits)
    bad = frame.drop(index=[5]).copy()
    bad.at[7, "logits_category"] = [1.0, 2.0]  # two logits for three classes
    bad.to_parquet(tmp_path / "bad.parquet")
    own.teacher.outputs_file = str(tmp_path / "bad.parquet")
    with pytest.raises(DatasetError) as err:
        fit_teacher(data, own, tmp_path / "bad_run", fabric)
    message = str(err.value)
    assert "bad.parquet, column 'video_id': 1 dataset row(s) have no teacher outputs [id: v0005]" in message
    assert "column 'logits_category', row 7: task 'category': expected 3 finite logit(s) per row [id: v0007]" in message


def test_resume_refuses_another_dataset_or_config_and_restores_from_one_file(fitted, tmp_path):
    from cpfd.errors import UsageError

    root, data, cfg, fabric = fitted
    distill(data, cfg, tmp_path / "run", fabric, root / "teacher")
    other = cfg.model_copy(deep=True)
    other.distill.lam = 0.9
    with pytest.raises(UsageError, match=r"distill.lam: 0.8 -> 0.9"):
        distill(data, other, tmp_path / "run", fabric, root / "teacher", resume=True)
    changed = load_dataset(make_dataset(tmp_path / "ds2", n=200, n_unlabelled=100, seed=5))
    with pytest.raises(UsageError, match="another dataset"):
        distill(changed, cfg, tmp_path / "run", fabric, root / "teacher", resume=True)
    # The resumable state holds the weights itself: a kill between the two checkpoint files cannot mix steps.
    state = load_file(str(tmp_path / "run" / "checkpoints" / "last_state.safetensors"))
    last = load_file(str(tmp_path / "run" / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(state[f"model/{k}"], v) for k, v in last.items())


def test_resume_continues_inside_an_epoch(fitted, monkeypatch):
    root, data, cfg, fabric = fitted
    full = cfg.model_copy(deep=True)
    full.train.epochs = 2
    full.train.checkpoint_every_steps = 2
    distill(data, full, root / "mid_straight", fabric, root / "teacher")
    steps_per_epoch = json.loads((root / "mid_straight" / "history.json").read_text())["epochs"][0]["step"]
    assert steps_per_epoch >= 4

    # Crash on the step after the second in-epoch checkpoint of epoch 2 (that step's work is lost and redone).
    crash_at = steps_per_epoch + 5
    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def crashing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        distill(data, full, root / "mid_resumed", fabric, root / "teacher")
    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    distill(data, full, root / "mid_resumed", fabric, root / "teacher", resume=True)
    a = load_file(str(root / "mid_straight" / "checkpoints" / "last.safetensors"))
    b = load_file(str(root / "mid_resumed" / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((root / "mid_resumed" / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [0, 1] and history[-1]["step"] == 2 * steps_per_epoch


@pytest.mark.slow
def test_ddp_teacher_outputs_are_scored_in_rank_shares(tmp_path):
    """fit-teacher on 2 processes: each rank scores half the rows into its part file and rank 0 assembles them;
    the cached logits equal one process scoring every row with the same checkpoint (and folds)."""
    from cpfd.distill.targets import load_targets
    from cpfd.runs import RunFolder
    from cpfd.train.teacher_outputs import raw_outputs

    ds = make_dataset(tmp_path / "ds", n=200, n_unlabelled=40)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    proc = subprocess.run([sys.executable, "-m", "cpfd", "fit-teacher", str(ds), "--out", str(tmp_path / "t"),
                           "--devices", "2", "--epochs", "2", "--oof-folds", "2", "--set", "train.min_steps=0",
                           "--set", "train.progress=false"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "assembled from 2 rank shares" in proc.stdout + proc.stderr
    run = RunFolder(tmp_path / "t")
    assert not list(run.teacher_outputs.parent.glob("*.rank*of*")), "the part files are removed once assembled"
    cached = load_targets(run.teacher_outputs).logits
    data = load_dataset(ds)
    alone, _ = raw_outputs(run, data)
    for task, z in alone.items():
        torch.testing.assert_close(cached[task], z, atol=1e-5, rtol=1e-5)


def test_off_a_terminal_training_prints_plain_progress_lines_not_a_bar(fitted, tmp_path, monkeypatch, capsys):
    from cpfd.train import loop

    root, data, cfg, fabric = fitted
    monkeypatch.setattr(loop, "LOG_EVERY_S", 0.0)  # a line after every batch
    shown = cfg.model_copy(deep=True)
    shown.train.progress = True
    shown.train.epochs = 1
    distill(data, shown, tmp_path / "plain", fabric, root / "teacher")
    out = capsys.readouterr()
    train_rows = len(student_train_rows(data, shown))
    lines = [line for line in out.out.splitlines() if "rows/s, ETA" in line]
    desc = f"student[{shown.distill.method}]"
    assert lines and lines[-1].startswith(f"{desc} 1/1: ") and f"{train_rows}/{train_rows} rows" in lines[-1]
    assert f"{desc} epoch 1/1" in out.out
    assert "\r" not in out.err and "%|" not in out.err  # pytest's capture is not a terminal: no bar


def test_weight_diagnostics_in_chunks_equal_one_pass(fitted, monkeypatch):
    """The diagnostics stream over chunks of rows; their sums and histogram equal the whole-array computation."""
    from cpfd.distill.probs import task_probs
    from cpfd.distill.task import CachedTeacher, DistillTask
    from cpfd.evaluate import diagnostics
    from cpfd.models.build import build_student
    from cpfd.registry import LOSSES

    root, data, cfg, _ = fitted
    targets = teacher_targets(root / "teacher", data, log=lambda _m: None)
    cfg = cfg.model_copy(deep=True)
    cfg.distill.confidence = "true_class"  # per-row weights, computed from the batch
    objective = LOSSES.get("cpfd")(cfg.distill, {t.name: t.kind for t in data.tasks}, targets.temperatures)
    task = DistillTask(build_student(data, cfg), objective, CachedTeacher(targets))
    task.prepare(data.labels, data.label_mask)
    rows = student_train_rows(data, cfg)
    whole = diagnostics.weight_diagnostics(task, data, targets, rows)["spam"]
    monkeypatch.setattr(diagnostics, "CHUNK_ROWS", 7)
    chunked = diagnostics.weight_diagnostics(task, data, targets, rows)["spam"]
    assert chunked["histogram"] == whole["histogram"] and chunked["rows_judged"] == whole["rows_judged"]
    for key in ("kd_mass_teacher_wrong", "mean_weight", "ess_fraction", "mean_weight_teacher_correct",
                "mean_weight_teacher_wrong", "teacher_error_rate"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-9), key
    # Against the weights computed directly over every row at once.
    idx = torch.as_tensor(rows)
    w = task.row_weights(idx, data.labels, data.label_mask, targets.logits)["spam"].double()
    known = data.label_mask["spam"][idx]
    probs = task_probs(targets.logits["spam"][idx], data.task("spam").kind, targets.temperatures["spam"])
    wrong = known & ~data.task("spam").kind.correct(probs, data.labels["spam"][idx])
    assert whole["mean_weight"] == pytest.approx(float(w.mean()))
    assert whole["ess_fraction"] == pytest.approx(float(w.sum() ** 2 / (len(w) * (w**2).sum())))
    assert whole["kd_mass_teacher_wrong"] == pytest.approx(float(w[wrong].sum() / w[known].sum()))
    assert whole["rows_judged"] == int(known.sum()) == 120  # the labelled train rows


def test_missing_privileged_values_are_filled_from_train_rows_with_indicators():
    """The rule the logreg teacher and the logreg_privileged reference share, by hand: train rows 0 and 1."""
    from cpfd.evaluate.references import privileged_fill, privileged_matrix

    nan = float("nan")

    class Privileged:  # the two things the rule reads of a dataset
        privileged = torch.tensor([[1.0, nan, nan], [3.0, 4.0, nan], [nan, nan, 5.0]])

        def __len__(self):
            return len(self.privileged)

        def privileged_rows(self, rows):
            return self.privileged[rows]

    data = Privileged()
    fill = privileged_fill(data, np.array([0, 1]))
    # column 0: mean 2, complete on train (no indicator); column 1: mean 4, missing on row 0; column 2: all missing.
    assert fill == {"fill": [2.0, 4.0, 0.0], "indicators": [1, 2]}
    assert privileged_matrix(data, fill).tolist() == [[1, 4, 0, 1, 1], [3, 4, 0, 0, 1], [2, 4, 5, 1, 0]]
