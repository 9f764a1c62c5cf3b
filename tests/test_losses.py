"""Loss, confidence, calibration and metric values against numbers computed by hand (see each comment)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cpfd.config import DistillConfig
from cpfd.distill.calibration import fit_temperature, scenario_temperatures
from cpfd.distill.confidence import CONFIDENCES
from cpfd.distill.context import TaskContext
from cpfd.distill.losses import LOSSES, build_loss, feature_kd_loss, hard_loss, kd_loss
from cpfd.evaluate.diagnostics import effective_sample_size
from cpfd.evaluate.metrics import best_threshold, gap_closed, task_metrics

LN2 = math.log(2)
T = torch.tensor


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol)


# ---- confidence functions -------------------------------------------------------------------------------------
# binary q = [0.8, 0.3], y = [1, 1], the second row unlabelled
BIN = (T([0.8, 0.3]), T([1.0, 1.0]), T([True, False]), "binary")
# multiclass p = [0.7, 0.2, 0.1], y = 1
MC = (T([[0.7, 0.2, 0.1]]), T([1]), T([True]), "multiclass")
# multilabel q = [0.9, 0.4], y = [1, 1]
ML = (T([[0.9, 0.4]]), T([[1.0, 1.0]]), T([True]), "multilabel")


def test_true_class_values():
    f = CONFIDENCES.get("true_class")
    assert close(f(*BIN), [0.8, 0.7])  # labelled: q; unlabelled falls back to max(q, 1-q) = 0.7
    assert close(f(*MC), [0.2])
    assert close(f(*ML), [[0.9, 0.4]])


def test_max_prob_values():
    f = CONFIDENCES.get("max_prob")
    assert close(f(*BIN), [0.8, 0.7]) and close(f(*MC), [0.7]) and close(f(*ML), [[0.9, 0.6]])


def test_entropy_values():
    f = CONFIDENCES.get("entropy")
    # 1 - H(0.8, 0.2)/ln 2 = 1 - 0.500402/0.693147 = 0.278072; 1 - H(.7,.2,.1)/ln 3 = 1 - 0.801819/1.098612 = 0.270153
    assert close(f(*BIN)[0], 0.2780719) and close(f(*MC), [0.2701533])


def test_margin_values():
    f = CONFIDENCES.get("margin")
    assert close(f(*BIN), [0.6, 0.4]) and close(f(*MC), [0.5]) and close(f(*ML), [[0.8, 0.2]])


def _binary_scenario_case(min_group_rows: int, shortfall_se: float = 0.0, last_row: tuple = (0.5, 0.5),
                          shortfall_power: float = 1.0):
    # rows: 0, 1 train; 2-5 validation. Scenario a: teacher beats the reference; b: it is worse.
    teacher = torch.tensor([0.9, 0.2, 0.8, 0.3, 0.4, last_row[0]])
    reference = torch.tensor([0.7, 0.4, 0.6, 0.4, 0.8, last_row[1]])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    context = TaskContext(split=np.array(["train", "train", "val", "val", "val", "val"]),
                          groups=np.array(list("abaabb")), reference_probs=reference, min_group_rows=min_group_rows,
                          shortfall_se=shortfall_se, shortfall_power=shortfall_power)
    return CONFIDENCES.get("scenario_reliability")(teacher, labels, torch.ones(6, dtype=torch.bool), "binary",
                                                   context=context)


def test_scenario_reliability_values():
    # a: mean log-gain (log .8/.6 + log .7/.6)/2 > 0 -> c_a = 1; b: (log .4/.8 + log .5/.5)/2 -> c_b = sqrt(.5).
    # Normalised by the train mean (1 + .70711)/2 = .85355: a -> 1.171573, b -> 0.828427.
    c = _binary_scenario_case(min_group_rows=2)
    a, b = 1.171573, 0.828427
    assert torch.allclose(c, torch.tensor([a, b, a, a, b, b]), atol=1e-5)


def test_scenario_reliability_weights_down_only_a_shortfall_beyond_noise():
    # b's gains ln .5 and 0: mean -.346574, s.d. .490129, s.e. .346574; at z = 2 the bound is +.346574 > 0, so
    # c_b = 1 and every weight is 1 (PFD): the shortfall is within noise.
    assert torch.allclose(_binary_scenario_case(min_group_rows=2, shortfall_se=2.0), torch.ones(6), atol=1e-6)
    # b's gains ln .5 (.4/.8) and ln .25 (.2/.8): mean -1.039721, s.e. .346574. z = 2: bound -.346574,
    # c_b = .707107 -> a 1.171573, b .828427; z = 1: bound -.693147, c_b = .5 -> a 1.333333, b .666667.
    for z, (a, b) in ((2.0, (1.171573, 0.828427)), (1.0, (4 / 3, 2 / 3))):
        c = _binary_scenario_case(min_group_rows=2, shortfall_se=z, last_row=(0.2, 0.8))
        assert torch.allclose(c, torch.tensor([a, b, a, a, b, b]), atol=1e-5), z


def test_scenario_reliability_sharpness_raises_the_bound_to_a_power():
    # b as above at z = 2: bound -.346574; k = 2 -> c_b = exp(-.693147) = .5 -> a 1.333333, b .666667;
    # k = 0 -> every scenario 1 (PFD).
    c = _binary_scenario_case(min_group_rows=2, shortfall_se=2.0, last_row=(0.2, 0.8), shortfall_power=2.0)
    assert torch.allclose(c, torch.tensor([4 / 3, 2 / 3, 4 / 3, 4 / 3, 2 / 3, 2 / 3]), atol=1e-5)
    flat = _binary_scenario_case(min_group_rows=2, shortfall_se=2.0, last_row=(0.2, 0.8), shortfall_power=0.0)
    assert torch.allclose(flat, torch.ones(6), atol=1e-6)


def _calibration_case(scenario_calibrated: bool):
    # Every label is 1; validation rows a a b b b c c, then one train row per scenario. a: teacher = reference;
    # b: the teacher's logits are 3x the reference's (same ranking, over-confident, one row wrong);
    # c: the teacher says .5 everywhere, the reference .75 and is always right (no temperature is fitted).
    sharp = lambda p: torch.sigmoid(3 * torch.logit(torch.tensor(p))).item()
    reference = torch.tensor([0.6, 0.6, 0.8, 0.7, 0.3, 0.75, 0.75, 0.6, 0.8, 0.75])
    teacher = torch.tensor([0.6, 0.6, sharp(0.8), sharp(0.7), sharp(0.3), 0.5, 0.5, 0.6, sharp(0.8), 0.5])
    context = TaskContext(split=np.array(["val"] * 7 + ["train"] * 3), groups=np.array(list("aabbbccabc")),
                          reference_probs=reference, min_group_rows=2, shortfall_se=0.0,
                          scenario_calibrated=scenario_calibrated)
    return CONFIDENCES.get("scenario_reliability")(teacher, torch.ones(10), torch.ones(10, dtype=torch.bool),
                                                   "binary", context=context)


def test_scenario_reliability_calibrated_per_scenario_ignores_over_confidence_alone():
    # c: gain ln(.5/.75) on both rows -> c_c = 2/3 either way (a constant .5 has no temperature to fit).
    # b, global: gains ln(.984615/.8) = .207639, ln(.927027/.7) = .280891, ln(.072973/.3) = -1.413694;
    #   c_b = exp(mean) = exp(-.308388) = .734654. Train mean (1 + .734654 + 2/3)/3 = .800440.
    c = _calibration_case(False)
    assert torch.allclose(c[7:], torch.tensor([1.249313, 0.917813, 0.832875]), atol=1e-5)
    # b, per scenario: the teacher's fitted temperature is 3x the reference's, the tempered probabilities agree,
    # the gain is 0 -> c_b = 1. Train mean (1 + 1 + 2/3)/3 = 8/9 -> 9/8, 9/8, 3/4.
    c = _calibration_case(True)
    assert torch.allclose(c[7:], torch.tensor([9 / 8, 9 / 8, 3 / 4]), atol=1e-4)
    assert torch.allclose(c[:7], torch.tensor([9 / 8] * 5 + [3 / 4] * 2), atol=1e-4)


def test_scenario_reliability_falls_back_to_one_global_weight_for_small_scenarios():
    # Groups of 2 validation rows < 3: one global reliability, so after normalisation every weight is 1 (= PFD).
    assert torch.allclose(_binary_scenario_case(min_group_rows=3), torch.ones(6), atol=1e-6)


def _agreement_case(min_group_rows: int = 2):
    # Every label is 1, so the gain is log(q / r). Validation rows, by cell (teacher / reference agree or not):
    #   a-agree (.6/.6, .9/.6): gains 0, ln 1.5   a-disagree (.3/.6, .15/.6): ln .5, ln .25
    #   b-agree (.6/.6, .9/.6): gains 0, ln 1.5   b-disagree (.8/.4, .6/.4): ln 2, ln 1.5
    # then three train rows: a-agree, a-disagree, b-disagree; and one test row.
    teacher = torch.tensor([0.6, 0.9, 0.3, 0.15, 0.6, 0.9, 0.8, 0.6, 0.7, 0.3, 0.7, 0.2])
    reference = torch.tensor([0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.4, 0.4, 0.6, 0.6, 0.4, 0.6])
    context = TaskContext(split=np.array(["val"] * 8 + ["train"] * 3 + ["test"]), groups=np.array(list("aaaabbbbaaba")),
                          reference_probs=reference, min_group_rows=min_group_rows)
    return CONFIDENCES.get("agreement_reliability")(teacher, torch.ones(12), torch.ones(12, dtype=torch.bool),
                                                    "binary", context=context)


def test_agreement_reliability_values():
    # M_a = (ln 1.5 - 3 ln 2)/4 = -.418494, M_b = (2 ln 1.5 + ln 2)/4 = .376019; cell means a: .202733 / -1.039721,
    # b: .202733 / .549306. Pooled within-cell s2 = .446009 / (8 - 4) = .111502; between-cell SS inside scenarios
    # 1.663804, tau2 = (1.663804 - 2 s2) / (8 - 8/4 - 8/4) = .360200; B = tau2 / (tau2 + s2/2) = .865967.
    # a-disagree: -.418494 - B * .621227 = -.956456 -> c = exp(-.956456) = .384252; every other cell's gain > 0 -> 1.
    # Train rows (a-agree, a-disagree, b-disagree) = (1, .384252, 1), mean .794751 -> 1.258256, .483488.
    c = _agreement_case()
    assert torch.allclose(c[8:11], torch.tensor([1.258256, 0.483488, 1.258256]), atol=1e-5)
    assert torch.allclose(c[:4], torch.tensor([1.258256, 1.258256, 0.483488, 0.483488]), atol=1e-5)
    assert c[11].item() == pytest.approx(0.483488, abs=1e-5)  # a-disagree, whatever its split


def test_agreement_reliability_is_pfd_without_scenarios_and_shrinks_small_scenarios_to_the_global_gain():
    fn = CONFIDENCES.get("agreement_reliability")
    bare = TaskContext(split=np.array(["train", "val"]), reference_probs=torch.tensor([0.6, 0.6]))
    assert fn(torch.tensor([0.1, 0.1]), torch.ones(2), torch.ones(2, dtype=torch.bool), "binary",
              context=bare).tolist() == [1.0, 1.0]
    # Scenarios of 4 validation rows < 5: both use the global mean gain, (-.418494 + .376019)/2 = -.021238, as M_g,
    # and the cells still move away from it by the same B (the between-cell spread is measured inside scenarios).
    c = _agreement_case(min_group_rows=5)
    assert c[0] == c[1] and c[2] == c[3] and c[2] < c[0]


def test_reference_agreement_values():
    fn = CONFIDENCES.get("reference_agreement")
    context = TaskContext(split=np.array(["train"]), reference_probs=torch.tensor([0.6]))
    # min(.1, .4) + min(.9, .6) = .7
    assert fn(torch.tensor([0.9]), torch.zeros(1), torch.zeros(1, dtype=torch.bool), "binary",
              context=context).item() == pytest.approx(0.7)
    context = TaskContext(split=np.array(["train"]), reference_probs=torch.tensor([[0.2, 0.5, 0.3]]))
    # min(.7,.2) + min(.2,.5) + min(.1,.3) = .5
    assert fn(torch.tensor([[0.7, 0.2, 0.1]]), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.bool),
              "multiclass", context=context).item() == pytest.approx(0.5)


def test_oracle_gate_values():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 0, -1, -1])
    mask = torch.tensor([True, True, False, False])
    # Row 2 is unlabelled with a hidden label (2: the teacher is right); row 3's hidden label is masked out.
    context = TaskContext(split=np.array(["train"] * 4), oracle_labels=torch.tensor([1, 1, 2, 1]),
                          oracle_mask=torch.tensor([False, False, True, False]))
    c = CONFIDENCES.get("oracle_gate")(probs, labels, mask, "multiclass", context=context)
    assert c.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_context_confidences_refuse_to_run_without_their_inputs():
    probs, labels, mask = torch.tensor([0.9]), torch.ones(1), torch.ones(1, dtype=torch.bool)
    bare = TaskContext(split=np.array(["train"]), groups=np.array(["a"]))
    for name in ("scenario_reliability", "reference_agreement", "oracle_gate", "fold_variance"):
        with pytest.raises(ValueError, match="needs"):
            CONFIDENCES.get(name)(probs, labels, mask, "binary", context=bare)
    loss = build_loss(DistillConfig(method="cpfd", confidence="scenario_reliability"), {"t": "binary"})
    with pytest.raises(ValueError, match="needs its context"):
        loss.row_confidence("t", torch.zeros(1, 1), labels, mask)


def test_registry_finds_a_new_confidence_by_name():
    @CONFIDENCES.register("always_half")
    def always_half(probs, labels, label_mask, task_type):
        return torch.full(probs.shape[:1], 0.5)

    try:
        loss = build_loss(DistillConfig(method="cpfd", confidence="always_half"), {"spam": "binary"})
        batch = {"labels": {"spam": T([1.0, 0.0])}, "label_mask": {"spam": T([True, True])}}
        assert close(loss.sample_weights("spam", T([[1.0], [2.0]]), batch), [0.5, 0.5])
    finally:
        CONFIDENCES._items.pop("always_half")
    with pytest.raises(KeyError, match="unknown confidence function 'nope'"):
        CONFIDENCES.get("nope")


# ---- element-wise losses ---------------------------------------------------------------------------------------


def test_hard_loss_values():
    assert close(hard_loss(T([[0.0], [2.0]]), T([1.0, 0.0]), "binary"), [LN2, 2.1269280])  # ln(1 + e^2)
    assert close(hard_loss(T([[1.0, 0.0, 0.0]]), T([0]), "multiclass"), [0.5514447])  # ln(e + 2) - 1
    assert close(hard_loss(T([[0.0, 0.0]]), T([[1.0, 0.0]]), "multilabel"), [[LN2, LN2]])


def test_kd_loss_values():
    # multiclass: teacher [2, 0], student [0, 0], τ=2: -Σ softmax([1,0]) · ln 0.5 = ln 2, × τ² = 4 ln 2
    assert close(kd_loss(T([[0.0, 0.0]]), T([[2.0, 0.0]]), 2.0, "multiclass"), [4 * LN2])
    # binary: teacher 2, student 2, τ=2: the Bernoulli entropy of σ(1) = 0.582203, × 4 = 2.328812
    assert close(kd_loss(T([[2.0]]), T([[2.0]]), 2.0, "binary"), [2.3288124])
    assert close(kd_loss(T([[0.0, 0.0]]), T([[2.0, -2.0]]), 1.0, "multilabel"), [[LN2, LN2]])


def test_kd_gradient_does_not_flow_into_teacher():
    t = T([[2.0, 0.0]], requires_grad=True)
    kd_loss(T([[0.0, 0.0]], requires_grad=True), t, 2.0, "multiclass").sum().backward()
    assert t.grad is None


def test_feature_kd_values():
    s, t = T([[1.0, 0.0]]), T([[0.0, 1.0]])
    assert close(feature_kd_loss(s, t, "mse"), [1.0])  # ((1)^2 + (1)^2) / 2
    assert close(feature_kd_loss(s, T([[1.0, 1.0]]), "cosine"), [1 - 1 / math.sqrt(2)])


# ---- objectives --------------------------------------------------------------------------------------------------
# Two binary rows, student logits 0, teacher logits [ln 4, ln(3/7)] (q = 0.8, 0.3), labels [1, ·]; row 2 unlabelled.
def _batch():
    return {"labels": {"spam": T([1.0, 1.0])}, "label_mask": {"spam": T([True, False])},
            "teacher_logits": {"spam": T([[math.log(4.0)], [math.log(3 / 7)]])}}


# By hand: CE on the labelled row = ln 2; KD at τ=1 against q, student σ(0) = 0.5: ln 2 for both rows.
OUT = {"logits": {"spam": T([[0.0], [0.0]])}}


def test_baseline_loss_is_ce_on_labelled_rows_only():
    loss = build_loss(DistillConfig(method="none"), {"spam": "binary"})
    assert close(loss(OUT, _batch())["loss"], LN2)


def test_pfd_loss_value():
    loss = build_loss(DistillConfig(method="pfd", lam=0.25, temperature=1.0), {"spam": "binary"})
    # (1-λ)·ln2 + λ·mean(1·ln2, 1·ln2) = ln 2
    assert close(loss(OUT, _batch())["loss"], LN2)
    loss = build_loss(DistillConfig(method="pfd", lam=0.5, temperature=2.0), {"spam": "binary"})
    # τ=2: q(τ) = σ(ln4/2) = 2/3 and σ(ln(3/7)/2); student σ(0)=0.5 so each KD = 4 ln 2
    assert close(loss(OUT, _batch())["loss"], 0.5 * LN2 + 0.5 * 4 * LN2)


def test_cpfd_kd_only_uses_true_class_with_label_free_fallback():
    loss = build_loss(DistillConfig(method="cpfd", confidence="true_class", lam=0.5, temperature=1.0), {"spam": "binary"})
    # w = [0.8 (true class), 0.7 (unlabelled: max prob)] → 0.5·ln2 + 0.5·(0.8 + 0.7)/2·ln2
    assert close(loss(OUT, _batch())["loss"], 0.5 * LN2 + 0.5 * 0.75 * LN2)


def test_cpfd_gate_floor_normalize():
    def weights(**kw):
        loss = build_loss(DistillConfig(method="cpfd", confidence="true_class", **kw), {"spam": "binary"})
        b = _batch()
        return loss.sample_weights("spam", b["teacher_logits"]["spam"], b)

    assert close(weights(weighting="gate", gate_threshold=0.75), [1.0, 0.0])
    assert close(weights(floor=0.75), [0.8, 0.75])
    assert close(weights(normalize=True), [0.8 / 0.75, 0.7 / 0.75])


def test_cpfd_interpolate_value():
    loss = build_loss(DistillConfig(method="cpfd", confidence="true_class", weighting="interpolate", temperature=1.0), {"spam": "binary"})
    # (1 - 0.8)·ln2 over labelled rows + mean(0.8·ln2, 0.7·ln2)
    assert close(loss(OUT, _batch())["loss"], 0.2 * LN2 + 0.75 * LN2)


def test_interpolate_with_normalize_is_rejected():
    with pytest.raises(ValueError, match="interpolate"):
        DistillConfig(weighting="interpolate", normalize=True)
    with pytest.raises(ValueError, match="relative weight"):
        build_loss(DistillConfig(weighting="interpolate", confidence="scenario_reliability"), {"t": "binary"})


def test_losses_registry_names():
    assert LOSSES.names() == ["cckd_t", "cpfd", "none", "pfd", "sync", "wsld"]
    assert {"entropy", "margin", "max_prob", "true_class", "scenario_reliability", "reference_agreement",
            "oracle_gate"} <= set(CONFIDENCES.names())


# ---- calibration and metrics -------------------------------------------------------------------------------------


def test_temperature_scaling_recovers_known_temperature():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 4, generator=gen) * 1.5
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=gen).squeeze(-1)
    # Labels drawn from softmax(z): logits 3z are over-confident by exactly T = 3.
    assert abs(fit_temperature(3 * z, y, "multiclass") - 3.0) < 0.15
    assert abs(fit_temperature(z, y, "multiclass") - 1.0) < 0.05


def test_no_temperature_is_fitted_where_the_teacher_gets_every_row_right():
    # Every row on the right side: the NLL falls toward 0 as T -> 0 and has no minimum; nothing is fitted.
    z = torch.tensor([2.0, -1.0, 0.5, -3.0])
    assert fit_temperature(z, torch.tensor([1.0, 0.0, 1.0, 0.0]), "binary") == 1.0
    assert fit_temperature(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), "multiclass") == 1.0
    from cpfd.distill.calibration import choose_temperature

    right = torch.linspace(0.5, 4, 40)  # 40 rows, all positive and labelled 1: nothing is fitted, nor kept
    choice = choose_temperature(right, torch.ones(40), "binary", np.arange(40) % 2)
    assert choice["fitted"] == 1.0 and not choice["kept"] and choice["temperature"] == 1.0
    # One row wrong (z = 0.5, y = 0): the minimum exists. At T: NLL = mean of softplus(-z/T) over the right rows and
    # softplus(.5/T) for the wrong one; its minimiser (found by a grid here) is what L-BFGS returns.
    y = torch.tensor([1.0, 0.0, 0.0, 0.0])
    grid = torch.linspace(0.2, 5, 4801, dtype=torch.float64)
    nll = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(z.double() / t, y.double()) for t in grid])
    assert fit_temperature(z, y, "binary") == pytest.approx(float(grid[nll.argmin()]), abs=2e-3)


def test_scenario_temperatures_are_fitted_per_scenario_with_a_global_fallback():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6000, 4, generator=gen) * 1.5
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=gen).squeeze(-1)
    groups = np.array(["clean"] * 3000 + ["stale"] * 2990 + ["tiny"] * 10)
    scale = torch.ones(6000)
    scale[3000:5990] = 4.0  # the stale scenario is over-confident by T = 4
    split = np.array(["val"] * 6000)
    t = scenario_temperatures(z * scale[:, None], y, torch.ones(6000, dtype=torch.bool), split, groups, "multiclass")
    assert abs(float(t[0]) - 1.0) < 0.1 and abs(float(t[3000]) - 4.0) < 0.4
    # The 10-row scenario gets the temperature fitted on all validation rows, between the two.
    global_t = fit_temperature(z * scale[:, None], y, "multiclass")
    assert float(t[-1]) == pytest.approx(global_t) and 1.0 < global_t < 4.0
    assert torch.all(t[:3000] == t[0]) and torch.all(t[3000:5990] == t[3000])


def test_scenario_temperatures_use_only_the_calibration_slice():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(4000, 4, generator=gen) * 1.5
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=gen).squeeze(-1)
    scale = torch.ones(4000)
    scale[:2000] = 4.0  # rows the teacher was selected on look different from the calibration slice
    split = np.array(["val"] * 4000)
    within = np.arange(4000) >= 2000
    t = scenario_temperatures(z * scale[:, None], y, torch.ones(4000, dtype=torch.bool), split, None, "multiclass",
                              within=within)
    # Fitted on the slice alone (T = 1 there), not on the mixture (1 < T < 4), and applied to every row.
    assert float(t[0]) == pytest.approx(fit_temperature(z[2000:], y[2000:], "multiclass"))
    assert abs(float(t[0]) - 1.0) < 0.1 and torch.all(t == t[0])
    # A slice of fewer than min_rows labelled rows fits nothing: T = 1 everywhere.
    few = np.arange(4000) >= 3980
    t = scenario_temperatures(z * scale[:, None], y, torch.ones(4000, dtype=torch.bool), split, None, "multiclass",
                              within=few)
    assert torch.all(t == 1.0)


def test_wsld_weights_values():
    loss = build_loss(DistillConfig(method="wsld"), {"t": "binary"})
    student, teacher = torch.tensor([[0.0], [0.0]]), torch.tensor([[math.log(3.0)], [math.log(3.0)]])
    batch = {"labels": {"t": torch.tensor([1.0, 1.0])}, "label_mask": {"t": torch.tensor([True, False])}}
    w = loss.step_weights("t", student, teacher, batch, torch.ones(2))
    # CE_s = ln 2, CE_t = -ln .75; w = 1 - exp(-ln2 / ln(4/3)) = 0.910133; the unlabelled row keeps 1.
    assert torch.allclose(w, torch.tensor([0.910133, 1.0]), atol=1e-6)


def test_temperature_is_kept_only_when_it_helps_on_held_out_rows():
    from cpfd.distill.calibration import choose_temperature

    gen = torch.Generator().manual_seed(1)
    z = torch.randn(4000, 4, generator=gen) * 1.5
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=gen).squeeze(-1)
    folds = np.arange(4000) % 2
    over = choose_temperature(3 * z, y, "multiclass", folds)  # over-confident by T = 3 on both folds: kept
    assert over["kept"] and abs(over["temperature"] - 3.0) < 0.2
    assert over["heldout_nll_after"] < over["heldout_nll_before"]
    # Fold 0 over-confident (3z), fold 1 under-confident (z/3): a temperature fitted on one fold hurts the other,
    # so the cross-fitted held-out NLL is worse than the uncalibrated teacher's and T stays 1.
    mixed = torch.where(torch.from_numpy(folds == 0).unsqueeze(-1), 3 * z, z / 3)
    choice = choose_temperature(mixed, y, "multiclass", folds)
    assert not choice["kept"] and choice["temperature"] == 1.0
    assert choice["heldout_nll_after"] >= choice["heldout_nll_before"]
    # A teacher over-confident by T = 5 on 28 calibration rows (below the 30-row floor): no temperature is kept,
    # although its held-out NLL says it helps (0.581 vs 0.739); on 30 rows it is.
    few = choose_temperature(5 * z[:28], y[:28], "multiclass", folds[:28])
    assert few["heldout_nll_after"] == pytest.approx(0.581, abs=1e-3)
    assert few["heldout_nll_before"] == pytest.approx(0.739, abs=1e-3)
    assert not few["kept"] and few["temperature"] == 1.0
    assert choose_temperature(5 * z[:30], y[:30], "multiclass", folds[:30])["kept"]


def test_temperature_that_lowers_nll_but_raises_held_out_ece_is_not_kept():
    from cpfd.distill.calibration import choose_temperature

    # Each fold: 98 rows at z = 2 (p = .8808) of which 88 are positive (.8980), and 2 confidently wrong rows at
    # z = 8 (p = .99966, y = 0). Softening pays for the two wrong rows, so the held-out NLL falls (.4844 -> .4674),
    # but it moves the 98 bulk rows away from their frequency. ECE (15 bins) by hand:
    #   T = 1:     .98 * |.8808 - .8980| + .02 * .99966 = .0368
    #   T = 1.339: .98 * |sigmoid(2/T) = .8167 - .8980| + .02 * (sigmoid(8/T) = .99747) = .0996
    z = torch.tensor(([2.0] * 98 + [8.0] * 2) * 2)
    y = torch.tensor(([1.0] * 88 + [0.0] * 12) * 2)
    choice = choose_temperature(z, y, "binary", np.repeat([0, 1], 100))
    assert choice["fitted"] == pytest.approx(1.339, abs=2e-3)
    assert choice["heldout_nll_after"] == pytest.approx(0.4674, abs=2e-4)
    assert choice["heldout_nll_before"] == pytest.approx(0.4844, abs=2e-4)
    assert choice["heldout_ece_before"] == pytest.approx(0.0368, abs=2e-4)
    assert choice["heldout_ece_after"] == pytest.approx(0.0996, abs=2e-4)
    assert not choice["kept"] and choice["temperature"] == 1.0


def test_best_threshold_and_f1():
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    # F1 at thresholds 0.1/0.35/0.4/0.8 = 0.667/0.8/0.5/0.667
    assert best_threshold(y, s) == pytest.approx(0.35)
    m = task_metrics("binary", s, y, [0.35])
    assert m["f1"] == pytest.approx(0.8) and m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0
    assert m["roc_auc"] == pytest.approx(0.75)


def test_ece_value():
    # bins: {0.9, 0.9} with 1 positive → |0.9 − 0.5|·2/3; {0.2} with 0 positives → 0.2·1/3; total 1/3
    m = task_metrics("binary", np.array([0.9, 0.9, 0.2]), np.array([1, 0, 0]), [0.5])
    assert m["ece"] == pytest.approx(1 / 3, abs=1e-6)


def test_multiclass_and_multilabel_f1():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    m = task_metrics("multiclass", probs, np.array([0, 1, 1, 2]), None)
    # class F1: 0 → 2/3 (P 1/2, R 1), 1 → 2/3 (P 1, R 1/2), 2 → 1; macro = 7/9
    assert m["f1"] == pytest.approx(7 / 9)
    ml = task_metrics("multilabel", np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.6]]), np.array([[1, 0], [0, 1], [0, 1]]),
                      [0.5, 0.5])
    # label 0: TP1 FP1 → F1 2/3; label 1: TP2 → 1; micro: TP3 FP1 FN0 → 6/7
    assert ml["f1"] == pytest.approx((2 / 3 + 1) / 2) and ml["f1_micro"] == pytest.approx(6 / 7)


def test_gap_closed():
    assert gap_closed(0.8, 0.7, 0.9) == pytest.approx(0.5)
    assert gap_closed(0.8, 0.7, 0.7) is None and gap_closed(0.8, 0.7, 0.65) is None


def test_effective_sample_size():
    assert effective_sample_size(2.0, 2.0, 4) == pytest.approx(0.5)  # w = 1, 1, 0, 0
    assert effective_sample_size(10.0, 10.0, 10) == pytest.approx(1.0)  # equal weights
    assert effective_sample_size(0.0, 0.0, 3) == 0.0


def test_precomputed_confidence_gives_the_same_loss():
    loss = build_loss(DistillConfig(method="cpfd", confidence="true_class", temperature=1.0), {"spam": "binary"})
    b = _batch()
    c = loss.confidences("spam", b["teacher_logits"]["spam"], b)
    assert close(c, [0.8, 0.7])
    assert close(loss(OUT, {**b, "confidence": {"spam": c}})["loss"], loss(OUT, b)["loss"])


# ---- λ pinned, and the multiclass / multilabel objectives by hand --------------------------------------------


def test_lambda_weights_kd_and_one_minus_lambda_weights_ce():
    # Binary, one labelled row: student logit ln 3 (σ = 0.75), label 1 → CE = −ln 0.75 = 0.287682;
    # teacher logit 0 (q = 0.5), τ = 1 → KD = −(0.5 ln 0.75 + 0.5 ln 0.25) = 0.836988.
    # λ = 0.2: 0.8·0.287682 + 0.2·0.836988 = 0.397543 (swapping λ and 1−λ would give 0.727090).
    loss = build_loss(DistillConfig(method="pfd", lam=0.2, temperature=1.0), {"s": "binary"})
    batch = {"labels": {"s": T([1.0])}, "label_mask": {"s": T([True])}, "teacher_logits": {"s": T([[0.0]])}}
    assert close(loss({"logits": {"s": T([[math.log(3.0)]])}}, batch)["loss"], 0.397543)


def _multiclass_case():
    # Student logits [ln 2, 0, 0] → p_s = [.5, .25, .25]; label 0 → CE = ln 2 = 0.693147.
    # Teacher logits [0, ln 2, 0] → p_t = [.25, .5, .25] (τ = 1) → KD = .25 ln 2 + .75 ln 4 = 1.213008.
    out = {"logits": {"c": T([[math.log(2.0), 0.0, 0.0]])}}
    batch = {"labels": {"c": T([0])}, "label_mask": {"c": T([True])},
             "teacher_logits": {"c": T([[0.0, math.log(2.0), 0.0]])}}
    return out, batch


def test_multiclass_pfd_and_cpfd_values():
    out, batch = _multiclass_case()
    pfd = build_loss(DistillConfig(method="pfd", lam=0.3, temperature=1.0), {"c": "multiclass"})
    # 0.7·0.693147 + 0.3·1.213008 = 0.849105
    assert close(pfd(out, batch)["loss"], 0.849105)
    cpfd = build_loss(DistillConfig(method="cpfd", confidence="true_class", lam=0.3, temperature=1.0), {"c": "multiclass"})
    # true_class: w = p_t[0] = 0.25 → 0.485203 + 0.3·0.25·1.213008 = 0.576179
    assert close(cpfd(out, batch)["loss"], 0.576179)


def _multilabel_case():
    # Student logits [0, ln 3] → σ = [.5, .75]; labels [1, 0] → CE = [ln 2, ln 4], mean 1.039721.
    # Teacher logits [ln 4, 0] → q = [.8, .5] (τ = 1) → KD = [ln 2, 0.836988], mean 0.765068.
    out = {"logits": {"t": T([[0.0, math.log(3.0)]])}}
    batch = {"labels": {"t": T([[1.0, 0.0]])}, "label_mask": {"t": T([True])},
             "teacher_logits": {"t": T([[math.log(4.0), 0.0]])}}
    return out, batch


def test_multilabel_pfd_and_cpfd_values():
    out, batch = _multilabel_case()
    pfd = build_loss(DistillConfig(method="pfd", lam=0.4, temperature=1.0), {"t": "multilabel"})
    # 0.6·1.039721 + 0.4·0.765068 = 0.929860
    assert close(pfd(out, batch)["loss"], 0.929860)
    cpfd = build_loss(DistillConfig(method="cpfd", confidence="true_class", lam=0.4, temperature=1.0), {"t": "multilabel"})
    # true_class per label: w = [0.8, 1 − 0.5] → mean(0.8·ln 2, 0.5·0.836988) = 0.486506 → 0.623833 + 0.194602
    assert close(cpfd(out, batch)["loss"], 0.818435)
    assert close(cpfd.sample_weights("t", batch["teacher_logits"]["t"], batch), [[0.8, 0.5]])


def test_synchronous_loss_value_and_warm_up():
    cfg = DistillConfig(method="sync", lam=0.25, temperature=1.0, sync_warmup_steps=1)
    loss = build_loss(cfg, {"t": "binary"})
    s, t = torch.tensor([[0.0], [0.0]]), torch.tensor([[math.log(3.0)], [math.log(3.0)]])
    batch = {"labels": {"t": torch.tensor([1.0, 0.0])}, "label_mask": {"t": torch.tensor([True, False])}}
    out = {"logits": {"t": s}, "teacher_logits": {"t": t}}
    teacher_ce = -math.log(0.75)  # labelled row only
    ce = math.log(2.0)
    kd = math.log(2.0)  # BCE(σ(0), q=.75) = -.75 log .5 - .25 log .5, both rows
    assert float(loss(out, batch)["loss"]) == pytest.approx(teacher_ce + 0.75 * ce, abs=1e-6)  # warm-up step
    assert float(loss(out, batch)["loss"]) == pytest.approx(teacher_ce + 0.75 * ce + 0.25 * kd, abs=1e-6)


def test_cckd_target_correction_values():
    loss = build_loss(DistillConfig(method="cckd_t"), {"t": "multiclass"})
    teacher = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]]).log()
    batch = {"labels": {"t": torch.tensor([1, 1])}, "label_mask": {"t": torch.tensor([True, False])}}
    target = torch.softmax(loss.target_logits("t", teacher, batch), -1)
    # c = .3: .3·[.6, .3, .1] + .7·[0, 1, 0] = [.18, .79, .03]; the unlabelled row keeps the teacher.
    assert torch.allclose(target, torch.tensor([[0.18, 0.79, 0.03], [0.6, 0.3, 0.1]]), atol=1e-6)
    binary = build_loss(DistillConfig(method="cckd_t"), {"t": "binary"})
    z = torch.tensor([[math.log(0.25 / 0.75)]])  # q = .25, y = 1: c = .25, q' = .25·.25 + .75 = .8125
    out = binary.target_logits("t", z, {"labels": {"t": torch.tensor([1.0])}, "label_mask": {"t": torch.tensor([True])}})
    assert torch.sigmoid(out).item() == pytest.approx(0.8125)


def test_fold_variance_values():
    folds = torch.tensor([[0.5, 0.5, 0.9], [0.7, 0.5, 0.5]])  # two fold teachers, three rows (binary q)
    context = TaskContext(split=np.array(["train"] * 3), fold_probs=folds)
    # Var over folds: .01, 0, .04; median .01; c = 1 / (1 + v / median) = .5, 1, .2
    c = CONFIDENCES.get("fold_variance")(folds.mean(0), torch.zeros(3), torch.zeros(3, dtype=torch.bool), "binary",
                                         context=context)
    assert torch.allclose(c, torch.tensor([0.5, 1.0, 0.2]), atol=1e-6)
