"""Verdicts that respect noise: paired-seed differences by hand, and the sentences the report builds from them."""

from __future__ import annotations

import math

import pytest

from cpfd.compare import paired_difference
from cpfd.evaluate.report import f1_columns, rich_table, verdict_lines


def test_paired_difference_by_hand():
    # d = [0.10, 0.11, 0.09]: mean 0.10, sd 0.01, s.e. 0.01/√3 = 0.005774 → 17 s.e. → better
    d = paired_difference([0.80, 0.82, 0.84], [0.70, 0.71, 0.75])
    assert d["mean"] == pytest.approx(0.10) and d["se"] == pytest.approx(0.01 / math.sqrt(3)) and d["n"] == 3
    assert d["verdict"] == "better"
    # d = [0, 0.01, −0.01]: mean 0 → no difference; a tiny mean inside 2 s.e. is no difference either
    assert paired_difference([0.80, 0.81, 0.79], [0.80, 0.80, 0.80])["verdict"] == "no difference"
    # d = [0.0006, −0.01, 0.0112]: mean 0.0006, s.e. 0.0061 → no difference (the old report said "beats")
    assert paired_difference([0.8006, 0.79, 0.8112], [0.80, 0.80, 0.80])["verdict"] == "no difference"
    assert paired_difference([0.6, 0.6, 0.6], [0.7, 0.71, 0.72])["verdict"] == "worse"
    assert paired_difference([0.9, 0.91], [0.1, 0.1])["verdict"] == "not enough seeds"


def _results(cpfd_vs_pfd: dict, teacher_vs_ref: dict, gap: dict) -> dict:
    base = {"vs_baseline": {"verdict": "no difference", "mean": 0.0, "se": 0.01, "n": 3}}
    return {
        "arms": {"baseline": {**base}, "teacher": {**base, "vs_reference": {"reference": "logreg_privileged",
                                                                            **teacher_vs_ref}},
                 "pfd": {**base}, "cpfd": {**base, "vs_pfd": cpfd_vs_pfd},
                 "logreg_privileged": {**base}},
        "teacher_calibration": {"spam": {"temperature": 1.2, "test_ece_before": 0.03, "test_ece_after": 0.08}},
        "teacher_vs_baseline": gap,
    }


def test_report_sentences_follow_the_standard_errors():
    lines = verdict_lines(_results({"mean": 0.0006, "se": 0.003, "n": 5, "verdict": "no difference"},
                                   {"mean": -0.08, "se": 0.01, "n": 5, "verdict": "worse"},
                                   {"mean": 0.01, "se": 0.01, "n": 5, "verdict": "no difference"}))
    text = "\n".join(lines)
    assert "no difference between CPFD and PFD" in text and "beats" not in text
    assert "the teacher is below its simple reference** (logreg_privileged): -0.0800 ± 0.0100 (paired s.e.)." in text
    assert "Calibration worsened test ECE** for spam" in text
    assert "Gap closed is undefined (teacher–baseline gap within noise" in text
    lines = verdict_lines(_results({"mean": 0.02, "se": 0.005, "n": 5, "verdict": "better"},
                                   {"mean": 0.01, "se": 0.01, "n": 5, "verdict": "no difference"},
                                   {"mean": 0.1, "se": 0.01, "n": 5, "verdict": "better"}))
    text = "\n".join(lines)
    assert "CPFD beats PFD on this dataset" in text and "below its simple reference" not in text
    assert "Gap closed is undefined" not in text
    one_seed = verdict_lines(_results({"mean": 0.02, "se": float("nan"), "n": 1, "verdict": "not enough seeds"},
                                      {"mean": -0.05, "se": float("nan"), "n": 1, "verdict": "not enough seeds"},
                                      {"mean": 0.1, "se": float("nan"), "n": 1, "verdict": "not enough seeds"}))
    text = "\n".join(one_seed)
    assert "not enough seeds to compare CPFD with PFD" in text and "too few seeds to tell from noise" in text


def test_one_task_gets_one_f1_column_and_several_get_their_mean():
    stats = {"mean": 0.8, "std": 0.01}
    arm = {"f1": {"spam": stats}, "mean_f1": stats, "gap_closed": {"mean_f1": 0.5}}
    results = {"dataset": "d", "tasks": ["spam"], "options": {"seeds": 3},
               "arms": {"baseline": arm, "pfd": arm, "logreg_student": arm}}
    assert f1_columns(results) == [("spam F1", None)]
    table = rich_table(results)
    assert [c.header for c in table.columns] == ["arm", "spam F1", "vs PFD (paired ± s.e.)", "gap closed"]
    # Gap closed describes distilled arms only: not the baseline, not a logistic-regression reference.
    assert list(table.columns[3].cells) == ["", "+50.0 %", ""]
    results["tasks"] = ["spam", "category"]
    assert f1_columns(results) == [("spam", "spam"), ("category", "category"), ("mean F1", None)]
