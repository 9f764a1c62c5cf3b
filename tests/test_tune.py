"""`cpfd tune`: the recipe is chosen on validation only, the study continues, controls are refused."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_dataset
from cpfd.cli import app
from cpfd.config import config_from_dict

runner = CliRunner()
FAST = ["--set", "train.progress=false", "--set", "train.min_steps=0", "--set", "model.d_model=32",
        "--set", "train.batch_size=64", "--set", "train.epochs=2"]


def _keys(obj) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    ds = make_dataset(root / "ds", n=160, n_unlabelled=80)
    result = runner.invoke(app, ["fit-teacher", str(ds), "--out", str(root / "teacher"), *FAST])
    assert result.exit_code == 0, result.output
    return ds, root / "teacher"


def test_tune_picks_the_best_validation_trial_and_never_reports_test(teacher_run, tmp_path):
    ds, teacher = teacher_run
    out = tmp_path / "tune"
    args = ["tune", str(ds), "--teacher", str(teacher), "--out", str(out), "--seeds", "2", "--lam", "0.2:0.8",
            "--temperature", "1:4", "--confidences", "true_class,max_prob", *FAST]
    result = runner.invoke(app, [*args, "--trials", "3"])
    assert result.exit_code == 0, result.output
    with open(out / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and not any("test" in column for column in rows[0])
    for row in rows:  # each trial's score is the mean of its runs' validation F1, read back from the run folders
        per_seed = [json.loads((out / f"trial_{int(row['trial']):03d}" / f"seed_{s}" / "metrics.json").read_text())
                    for s in (0, 1)]
        assert float(row["val_mean_f1"]) == pytest.approx(sum(m["val"]["mean_f1"] for m in per_seed) / 2, abs=1e-12)
        assert 0.2 <= float(row["lam"]) <= 0.8 and 1.0 <= float(row["temperature"]) <= 4.0
        assert row["method"] in {"pfd", "cpfd"} and row["target_temperature"] in {"none", "scenario"}
    best_row = max(rows, key=lambda r: float(r["val_mean_f1"]))
    summary = json.loads((out / "tune.json").read_text())
    assert "test" not in _keys(summary)
    assert summary["best"]["trial"] == int(best_row["trial"])
    best_cfg = config_from_dict(yaml.safe_load((out / "best.yaml").read_text()))
    assert best_cfg.distill.lam == pytest.approx(float(best_row["lam"]))
    assert best_cfg.distill.method == best_row["method"]
    assert best_cfg.train.epochs == 2  # the rest of the config is the one the trials ran with
    assert (out / "tune_history.png").stat().st_size > 1000

    # A second call with more trials continues the study: one new trial, the finished ones untouched.
    before = {p: p.stat().st_mtime_ns for p in out.glob("trial_*/seed_*/metrics.json")}
    result = runner.invoke(app, [*args, "--trials", "4"])
    assert result.exit_code == 0, result.output
    after = {p: p.stat().st_mtime_ns for p in out.glob("trial_*/seed_*/metrics.json")}
    assert {p for p in after if p not in before} == {out / "trial_003" / "seed_0" / "metrics.json",
                                                    out / "trial_003" / "seed_1" / "metrics.json"}
    assert all(after[p] == t for p, t in before.items())


def test_tune_refuses_controls_and_empty_ranges(teacher_run, tmp_path):
    ds, teacher = teacher_run
    base = ["tune", str(ds), "--teacher", str(teacher), "--out", str(tmp_path / "t"), "--trials", "1", *FAST]
    result = runner.invoke(app, [*base, "--confidences", "oracle_gate"])
    assert result.exit_code == 2 and "oracle_gate" in result.output and "control" in result.output
    result = runner.invoke(app, [*base, "--methods", "none"])
    assert result.exit_code == 2 and "does not distil" in result.output
    result = runner.invoke(app, [*base, "--lam", "0.9:0.1"])
    assert result.exit_code == 2 and "range" in result.output
    assert not (tmp_path / "t" / "trial_000").exists()
