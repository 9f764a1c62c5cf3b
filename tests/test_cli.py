"""The command line: clear errors on bad input, and `compare` producing its report, results and plots."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from conftest import make_dataset
from cpfd.cli import app

runner = CliRunner()
FAST = ["--set", "train.progress=false", "--set", "train.min_steps=0", "--set", "model.d_model=32", "--set", "train.batch_size=64"]


def test_help_explains_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("validate", "fit-teacher", "distill", "evaluate", "compare", "list"):
        assert command in result.output
    result = runner.invoke(app, ["distill", "--help"])
    assert "--confidence" in result.output and "--weighting" in result.output


def test_validate_ok_and_bad(tmp_path):
    ok = make_dataset(tmp_path / "ok", n=60, n_unlabelled=20)
    result = runner.invoke(app, ["validate", str(ok)])
    assert result.exit_code == 0 and "valid" in result.output and "unlabelled rows: 20" in result.output

    def mutate(df):
        df.loc[3, "video_id"] = "v0001"
        return df

    bad = make_dataset(tmp_path / "bad", n=60, fmt="csv", mutate=mutate)
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "data.csv, column 'video_id', rows 2, 4: duplicate id" in result.output
    assert "Traceback" not in result.output


def test_bad_config_value_is_a_clear_error(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=60)
    result = runner.invoke(app, ["distill", str(ds), "--set", "distill.lam=3"])
    assert result.exit_code == 2 and "distill.lam" in result.output
    result = runner.invoke(app, ["distill", str(ds), "--method", "cpfd", "--confidence", "nope", "--out",
                                 str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown confidence function 'nope'" in result.output
    for lams in ("0.8,high", "1.5"):
        result = runner.invoke(app, ["compare", str(ds), "--lams", lams, "--out", str(tmp_path / "c")])
        assert result.exit_code == 2 and "--lams" in result.output and not (tmp_path / "c").exists()
    for spec, says in (("cpfd_se0", "expected NAME:key=value"), ("x:lam=3", "lam"), ("x:nope=1", "nope"),
                       ("x y:lam=0.5", "expected NAME"), ("pfd:lam=0.5", "arm names used twice: pfd")):
        result = runner.invoke(app, ["compare", str(ds), "--variant", spec, "--out", str(tmp_path / "c")])
        assert result.exit_code == 2 and says in result.output, (spec, result.output)


def test_fit_teacher_distill_evaluate(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=160, n_unlabelled=40)
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert runner.invoke(app, ["fit-teacher", str(ds), "--out", str(teacher), "--epochs", "2", *FAST]).exit_code == 0
    result = runner.invoke(app, ["distill", str(ds), "--out", str(student), "--teacher", str(teacher), "--method",
                                 "cpfd", "--confidence", "margin", "--weighting", "gate", "--epochs", "2", *FAST])
    assert result.exit_code == 0, result.output
    assert "confidence: margin" in (student / "config.yaml").read_text()
    result = runner.invoke(app, ["evaluate", str(student)])
    assert result.exit_code == 0 and "mean F1" in result.output
    saved = json.loads((student / "metrics.json").read_text())["test"]["mean_f1"]
    assert json.loads((student / "eval.json").read_text())["test"]["mean_f1"] == pytest.approx(saved)


def test_compare_writes_report_results_and_plots(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=160, n_unlabelled=80)
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(ds), "--out", str(out), "--seeds", "2", "--epochs", "2", "--normalize",
                                 "--lams", "0.5,0.8", "--variant", "cpfd_se0:reliability_se=0,floor=0.1", *FAST])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    arms = set(results["arms"])
    references = {"logreg_student", "logreg_privileged"}
    assert {"baseline", "self_distill", "pfd", "cpfd", "cpfd_true_class", "teacher", "pfd_labelled",
            "cpfd_labelled", "cpfd_norm", "pfd_scenario_temp",
            "pfd_lam0.5", "cpfd_lam0.5", "cpfd_se0"} == arms - references  # a group column; λ 0.8 is configured
    variant = results["arms"]["cpfd_se0"]["distill_config"]
    assert (variant["method"], variant["reliability_se"], variant["floor"], variant["lam"]) == ("cpfd", 0, 0.1, 0.8)
    lam = {arm: results["arms"][arm]["distill_config"] for arm in ("pfd", "cpfd", "pfd_lam0.5", "cpfd_lam0.5")}
    assert [c["lam"] for c in lam.values()] == [0.8, 0.8, 0.5, 0.5]
    assert lam["cpfd_lam0.5"]["confidence"] == lam["cpfd"]["confidence"] and lam["pfd_lam0.5"]["method"] == "pfd"
    assert references <= arms and results["arms"]["teacher"]["vs_reference"]["reference"] == "logreg_privileged"
    assert results["arms"]["baseline"]["vs_reference"]["reference"] == "logreg_student"
    assert len(results["arms"]["cpfd"]["mean_f1"]["values"]) == 2
    for png in ("f1_by_arm.png", "cpfd_weights.png", "teacher_reliability.png"):
        assert (out / png).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| cpfd |" in report and "gap closed" in report and "CPFD vs PFD" in report and "feed" in report
    assert "mean F1" in result.output


def test_compare_resume_keeps_finished_runs_and_trains_the_rest(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=160)
    out = tmp_path / "cmp"
    args = ["compare", str(ds), "--out", str(out), "--seeds", "1", "--epochs", "2", "--no-scenario", *FAST]
    assert runner.invoke(app, args).exit_code == 0
    seed = out / "seed_0"
    finished = {p.parent.name: p.stat().st_mtime_ns for p in seed.glob("*/metrics.json")}
    pfd_before = json.loads((seed / "pfd" / "metrics.json").read_text())["test"]["mean_f1"]
    (seed / "pfd" / "metrics.json").unlink()  # as if the job was killed while training this arm

    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    kept = re.findall(r"\] (?:arm \d+ of \d+: )?([^:\n]+): kept, finished before", result.output)
    assert kept == ["teacher (privileged)", "teacher (self)", "baseline", "self_distill", "cpfd", "cpfd_true_class"]
    after = {p.parent.name: p.stat().st_mtime_ns for p in seed.glob("*/metrics.json")}
    retrained = {name for name in after if after[name] != finished.get(name)}
    assert retrained == {"pfd", "logreg_student", "logreg_privileged"}  # the references are refitted (cheap)
    assert json.loads((seed / "pfd" / "metrics.json").read_text())["test"]["mean_f1"] == pytest.approx(pfd_before)
    assert set(json.loads((out / "results.json").read_text())["arms"]) >= {"baseline", "pfd", "cpfd", "teacher"}

    result = runner.invoke(app, [*args, "--resume", "--set", "distill.temperature=3"])
    assert result.exit_code != 0
    assert "finished with another config" in result.output and "distill.temperature: 2.0 -> 3.0" in result.output


@pytest.mark.slow
def test_report_rebuilds_from_seeds_run_separately(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=160)
    out = tmp_path / "cmp"
    for seed in ("0", "1"):  # as two processes (or machines) would, into one folder
        result = runner.invoke(app, ["compare", str(ds), "--out", str(out), "--seeds", "1", "--epochs", "2",
                                     "--no-scenario", "--set", f"train.seed={seed}", *FAST])
        assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["options"]["seeds"] == 1
    result = runner.invoke(app, ["report", str(out)])  # arms are described from their own saved configs
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["options"]["seeds"] == 2 and set(results["arms"]) == {
        "baseline", "self_distill", "pfd", "cpfd", "cpfd_true_class", "teacher", "logreg_student", "logreg_privileged"}
    assert len(results["arms"]["pfd"]["mean_f1"]["values"]) == 2 and (out / "report.md").exists()


def test_a_plugin_module_registers_a_confidence_that_distill_uses(tmp_path, monkeypatch):
    from cpfd.registry import CONFIDENCES

    (tmp_path / "team_plugin.py").write_text(
        "import torch\n"
        "from cpfd.registry import CONFIDENCES\n\n"
        "@CONFIDENCES.register('team_quarter')\n"
        "def team_quarter(probs, labels, label_mask, task_type):\n"
        "    return torch.full(labels.shape, 0.25)  # per row, per label for multilabel\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = make_dataset(tmp_path / "ds", n=120)
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    config = tmp_path / "run.yaml"
    config.write_text("plugins: [team_plugin]\ndistill:\n  confidence: team_quarter\n")
    try:
        assert runner.invoke(app, ["fit-teacher", str(ds), "--out", str(teacher), "--epochs", "1", *FAST]).exit_code == 0
        result = runner.invoke(app, ["distill", str(ds), "--teacher", str(teacher), "--out", str(student),
                                     "--config", str(config), "--epochs", "1", *FAST])
        assert result.exit_code == 0, result.output
        assert "confidence: team_quarter" in (student / "config.yaml").read_text()
        weights = json.loads((student / "metrics.json").read_text())["weights"]
        assert all(w["mean_weight"] == pytest.approx(0.25) for w in weights.values())
        # Without the plugin the name is rejected at load time, listing what is registered.
        config.write_text("distill:\n  confidence: not_registered\n")
        result = runner.invoke(app, ["distill", str(ds), "--teacher", str(teacher), "--out", str(tmp_path / "x"),
                                     "--config", str(config)])
        assert result.exit_code == 2 and "unknown confidence function 'not_registered'; registered:" in result.output
        assert "team_quarter" in result.output
    finally:
        CONFIDENCES.unregister("team_quarter")


def test_typed_choices_reject_typos_in_the_parser(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=60)
    result = runner.invoke(app, ["distill", str(ds), "--weighting", "gat"])
    assert result.exit_code == 2 and "gat" in result.output and "kd_only" in result.output
    result = runner.invoke(app, ["validate", str(ds), "--on-bad-video", "ignore"])
    assert result.exit_code == 2 and "fail" in result.output and "skip" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("cpfd ")


def test_rebuilt_report_equals_the_original(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=120, n_unlabelled=40)
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(ds), "--out", str(out), "--seeds", "2", "--epochs", "1",
                                 "--confidences", "margin", *FAST])
    assert result.exit_code == 0, result.output
    original = {name: (out / name).read_text() for name in ("results.json", "report.md")}
    results = json.loads(original["results.json"])
    assert "CPFD, confidence=margin" in results["arms"]["cpfd_margin"]["description"]
    assert results["arms"]["cpfd_margin"]["distill_config"]["confidence"] == "margin"
    (out / "results.json").unlink()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert {name: (out / name).read_text() for name in original} == original
