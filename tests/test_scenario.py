"""Scenario-aware CPFD and its controls: the oracle gate's hidden labels stay out of every other arm, and the
context-aware confidences refuse to run without what they need."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import make_dataset
from cpfd.cli import app
from cpfd.data.contract import DatasetError
from cpfd.data.oracle import load_oracle_labels
from cpfd.data.prepared import load_dataset

runner = CliRunner()
FAST = ["--set", "train.progress=false", "--set", "train.min_steps=0", "--set", "model.d_model=32",
        "--set", "train.batch_size=64"]
LABELLED, UNLABELLED = 120, 80


def _dataset_and_oracle(tmp_path: Path) -> tuple[Path, Path]:
    ds = make_dataset(tmp_path / "ds", n=LABELLED, n_unlabelled=UNLABELLED)
    # The same latent draws with every row labelled: the labels the benchmark hid.
    full = pd.read_parquet(make_dataset(tmp_path / "full", n=LABELLED + UNLABELLED) / "data.parquet")
    hidden = full.iloc[LABELLED:][["video_id", "is_spam", "category", "tags"]]
    hidden.to_csv(tmp_path / "oracle.csv", index=False)
    return ds, tmp_path / "oracle.csv"


def test_oracle_labels_reach_no_arm_but_the_oracle_gate(tmp_path):
    ds, oracle = _dataset_and_oracle(tmp_path)
    runs = {}
    for name, extra in (("plain", []), ("oracle", ["--oracle-labels", str(oracle)])):
        out = tmp_path / name
        result = runner.invoke(app, ["compare", str(ds), "--out", str(out), "--seeds", "1", "--epochs", "1",
                                     *extra, *FAST])
        assert result.exit_code == 0, result.output
        runs[name] = json.loads((out / "results.json").read_text())
    plain, with_oracle = runs["plain"], runs["oracle"]
    assert "oracle_gate" in with_oracle["arms"] and "oracle_gate" not in plain["arms"]
    # The default recipe is the per-scenario reliability (the dataset has a group column); the paper's beside it.
    assert plain["arms"]["cpfd"]["distill_config"]["confidence"] == "scenario_reliability"
    assert "cpfd_true_class" in plain["arms"] and "cpfd_scenario" not in plain["arms"]
    for arm, seeds in plain["per_seed"].items():
        for seed, metrics in seeds.items():
            other = with_oracle["per_seed"][arm][seed]
            # Bit-identical training outcome: predictions, thresholds, selected epoch, losses.
            for key in ("test", "val", "best_val_loss", "best_epoch", "steps_run"):
                assert metrics.get(key) == other.get(key), (arm, key)
    # The gate drops exactly the rows the teacher gets wrong: no distillation mass lands on them.
    gate = with_oracle["per_seed"]["oracle_gate"]["0"]["weights"]
    assert all(w["kd_mass_teacher_wrong"] == 0.0 for w in gate.values())
    # With hidden labels, PFD's diagnostics judge the unlabelled rows too (evaluation only).
    pfd_plain = plain["per_seed"]["pfd"]["0"]["weights"]["spam"]
    pfd_oracle = with_oracle["per_seed"]["pfd"]["0"]["weights"]["spam"]
    assert pfd_oracle["rows_judged"] == pfd_plain["rows_judged"] + UNLABELLED
    assert pfd_plain["kd_mass_teacher_wrong"] == pytest.approx(pfd_plain["teacher_error_rate"])
    # Per-scenario weights: PFD's are 1 in each; the scenario weight is one value per scenario, its train mean 1.
    assert pfd_plain["mean_weight_by_group"] == {"feed": 1.0, "search": 1.0}
    cpfd = plain["per_seed"]["cpfd"]["0"]["weights"]["spam"]
    assert set(cpfd["mean_weight_by_group"]) == {"feed", "search"}
    assert min(cpfd["mean_weight_by_group"].values()) <= cpfd["mean_weight"] <= max(cpfd["mean_weight_by_group"].values())
    assert plain["arms"]["cpfd"]["weights"]["spam"]["mean_weight_by_group"] == cpfd["mean_weight_by_group"]  # 1 seed
    report = (tmp_path / "oracle" / "report.md").read_text()
    assert "**Oracle gate vs PFD:**" in report and "KD mass on teacher-wrong rows" in report
    assert "| arm | task | feed | search |" in report and "| pfd | spam | 1.000 | 1.000 |" in report


def test_oracle_labels_file_is_checked_against_the_dataset(tmp_path):
    ds, oracle = _dataset_and_oracle(tmp_path)
    data = load_dataset(ds)
    good = load_oracle_labels(oracle, data)
    assert good.rows == UNLABELLED
    table = pd.read_csv(oracle)
    val_id = data.ids[list(data.split).index("val")]
    bad = pd.concat([table, pd.DataFrame({"video_id": [val_id, "nope"], "is_spam": [1, 0],
                                          "category": ["news", "news"], "tags": ["a", "a"]})])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DatasetError) as err:
        load_oracle_labels(tmp_path / "bad.csv", data)
    text = str(err.value)
    assert "bad.csv" in text and "train rows only" in text and "id not in the dataset" in text
    assert f"row {len(table) + 2}" in text or f"rows {len(table) + 2}" in text  # the val row, 1-based after header
    # A labelled row's hidden label must agree with the dataset's own.
    own = data.ids[0]
    own_label = int(data.labels["spam"][0])
    clash = pd.concat([table, pd.DataFrame({"video_id": [own], "is_spam": [1 - own_label]})])
    clash.to_csv(tmp_path / "clash.csv", index=False)
    with pytest.raises(DatasetError, match="differs from the dataset's own label"):
        load_oracle_labels(tmp_path / "clash.csv", data)


def test_context_confidences_say_what_they_need(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=120)
    teacher = tmp_path / "teacher"
    assert runner.invoke(app, ["fit-teacher", str(ds), "--out", str(teacher), "--epochs", "1",
                               "--set", "teacher.fit_reference=false", *FAST]).exit_code == 0
    result = runner.invoke(app, ["distill", str(ds), "--teacher", str(teacher), "--out", str(tmp_path / "s"),
                                 "--method", "cpfd", "--epochs", "1", *FAST])  # the default confidence needs one
    assert result.exit_code != 0 and "needs --reference RUN" in result.output
    result = runner.invoke(app, ["distill", str(ds), "--teacher", str(teacher), "--reference", str(teacher),
                                 "--out", str(tmp_path / "s"), "--method", "cpfd", "--confidence",
                                 "scenario_reliability", "--epochs", "1", *FAST])
    assert result.exit_code != 0 and "was fitted with privileged features" in result.output
    result = runner.invoke(app, ["distill", str(ds), "--teacher", str(teacher), "--out", str(tmp_path / "s"),
                                 "--method", "cpfd", "--confidence", "oracle_gate", "--epochs", "1", *FAST])
    assert result.exit_code != 0 and "--oracle-labels" in result.output
    reference = tmp_path / "reference"
    assert runner.invoke(app, ["fit-teacher", str(ds), "--out", str(reference), "--epochs", "1",
                               "--set", "teacher.use_privileged=false", *FAST]).exit_code == 0
    result = runner.invoke(app, ["distill", str(ds), "--teacher", str(teacher), "--reference", str(reference),
                                 "--out", str(tmp_path / "s"), "--method", "cpfd", "--confidence",
                                 "scenario_reliability", "--epochs", "1", *FAST])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "s" / "run.json").read_text())
    assert info["reference"] == str(reference)


@pytest.mark.parametrize("wide", [False, True])
def test_synchronous_schedule_trains_a_deployable_student(tmp_path, wide):
    ds = make_dataset(tmp_path / "ds", n=120, n_unlabelled=40)
    out = tmp_path / "sync"
    extra = ["--set", "model.wide=true", "--set", "model.wide_init=logreg"] if wide else []
    result = runner.invoke(app, ["distill", str(ds), "--out", str(out), "--method", "sync", "--epochs", "1",
                                 "--set", "distill.sync_warmup_steps=1", *extra, *FAST])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "sync" and metrics["train_rows"] == 72 + 40  # labelled train rows + unlabelled
    # The saved weights hold the pair; the student alone is rebuilt from them and scores like training did.
    result = runner.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 0, result.output
    again = json.loads((out / "eval.json").read_text())
    assert again["test"]["mean_f1"] == pytest.approx(metrics["test"]["mean_f1"])


def test_fold_variance_distils_the_fold_mean_and_needs_fold_teachers(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=120, n_unlabelled=40)
    plain, folded = tmp_path / "plain", tmp_path / "folded"
    assert runner.invoke(app, ["fit-teacher", str(ds), "--out", str(plain), "--epochs", "1", *FAST]).exit_code == 0
    args = ["--method", "cpfd", "--confidence", "fold_variance", "--epochs", "1", *FAST]
    result = runner.invoke(app, ["distill", str(ds), "--teacher", str(plain), "--out", str(tmp_path / "a"), *args])
    assert result.exit_code != 0 and "--oof-folds" in result.output
    result = runner.invoke(app, ["fit-teacher", str(ds), "--out", str(folded), "--epochs", "1", "--oof-folds", "2",
                                 *FAST])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["distill", str(ds), "--teacher", str(folded), "--out", str(tmp_path / "b"), *args])
    assert result.exit_code == 0, result.output
    weights = json.loads((tmp_path / "b" / "metrics.json").read_text())["weights"]
    for w in weights.values():  # 1 / (1 + v / median v): the median row gets 1/2, and none exceeds 1
        assert 0 < w["mean_weight"] < 1


def test_a_reference_fitted_beside_the_teacher_is_found_without_flags(tmp_path):
    # Without scenarios scenario_reliability is plain PFD and needs no reference: none is fitted or asked for.
    flat = make_dataset(tmp_path / "flat", n=120, spec_overrides={"group": None})
    assert runner.invoke(app, ["fit-teacher", str(flat), "--out", str(tmp_path / "t0"), "--epochs", "1",
                               "--set", "teacher.fit_reference=true", *FAST]).exit_code == 0
    assert not (tmp_path / "t0" / "reference").exists()
    result = runner.invoke(app, ["distill", str(flat), "--teacher", str(tmp_path / "t0"), "--out",
                                 str(tmp_path / "s0"), "--confidence", "scenario_reliability", "--epochs", "1", *FAST])
    assert result.exit_code == 0, result.output
    weights = json.loads((tmp_path / "s0" / "metrics.json").read_text())["weights"]
    assert all(w["mean_weight"] == pytest.approx(1.0) and w["ess_fraction"] == pytest.approx(1.0)
               for w in weights.values())
    ds = make_dataset(tmp_path / "ds", n=120)
    teacher = tmp_path / "teacher"
    result = runner.invoke(app, ["fit-teacher", str(ds), "--out", str(teacher), "--epochs", "1",
                                 "--set", "teacher.fit_reference=true", *FAST])
    assert result.exit_code == 0, result.output
    ref_info = json.loads((teacher / "reference" / "run.json").read_text())
    assert ref_info["role"] == "teacher" and (teacher / "reference" / "config.yaml").read_text().count(
        "use_privileged: false") == 1
    result = runner.invoke(app, ["distill", str(ds), "--teacher", str(teacher), "--out", str(tmp_path / "s"),
                                 "--method", "cpfd", "--confidence", "scenario_reliability", "--epochs", "1", *FAST])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s" / "run.json").read_text())["reference"] == str(teacher / "reference")
