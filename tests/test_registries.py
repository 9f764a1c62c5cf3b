"""Every registered confidence function, loss, task type and encoder gets the same checks for free (timm's way):
add one and it is tested here without writing a test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpfd.config import DistillConfig
from cpfd.distill.context import TaskContext, takes_context
from cpfd.distill.losses import build_loss
from cpfd.encoders import EncoderError, FrameEncoder, TextEncoder, create_encoder
from cpfd.registry import CONFIDENCES, ENCODERS, LOSSES, TASK_TYPES
from cpfd.task_types import task_type

GEN = torch.Generator().manual_seed(0)
SHAPES = {"binary": (6, 1), "multiclass": (6, 4), "multilabel": (6, 3)}


def _labels(kind: str, n: int, k: int) -> torch.Tensor:
    if kind == "binary":
        return torch.randint(0, 2, (n,), generator=GEN).float()
    if kind == "multiclass":
        return torch.randint(0, k, (n,), generator=GEN)
    return torch.randint(0, 2, (n, k), generator=GEN).float()


def _case(kind: str):
    n, k = SHAPES[kind]
    logits = torch.randn(n, k, generator=GEN) * 2
    mask = torch.tensor([True, True, True, False, False, True])
    return logits, _labels(kind, n, k), mask


@pytest.mark.parametrize("kind", TASK_TYPES.names())
@pytest.mark.parametrize("name", CONFIDENCES.names())
def test_every_confidence_is_in_unit_range_has_the_right_shape_and_is_label_free_without_labels(name, kind):
    fn = CONFIDENCES.get(name)
    tt = task_type(kind)
    logits, labels, mask = _case(kind)
    probs = tt.probs(logits)
    extra = {}
    if takes_context(fn):  # every row of a small dataset: two scenarios, labelled val rows, hidden labels
        reference = tt.probs(torch.randn(logits.shape, generator=GEN))
        hidden = _labels(kind, *SHAPES[kind])
        extra["context"] = TaskContext(split=np.array(["train", "train", "val", "train", "train", "val"]),
                                       groups=np.array(list("aabbab")), reference_probs=reference,
                                       oracle_labels=hidden, oracle_mask=~mask, min_group_rows=1,
                                       fold_probs=torch.stack([tt.probs(torch.randn(logits.shape, generator=GEN))
                                                               for _ in range(3)]))
    c = fn(probs, labels, mask, kind, **extra)
    expected = probs.shape if tt.per_label else probs.shape[:1]
    assert c.shape == expected
    if getattr(fn, "mean_one_over_train", False):  # a relative weight: λ keeps its mean over train rows
        train = torch.from_numpy(extra["context"].split == "train")
        assert torch.all(c >= 0) and torch.allclose(c[train].mean(0), torch.ones(()), atol=1e-5)
    else:
        assert torch.all((c >= 0) & (c <= 1 + 1e-6))
    # Rows without a label must not depend on the label value stored there.
    flipped = labels.clone()
    flipped[~mask] = (1 - flipped[~mask]) if kind != "multiclass" else (flipped[~mask] + 1) % SHAPES[kind][1]
    c2 = fn(probs, flipped, mask, kind, **extra)
    assert torch.equal(c[~mask], c2[~mask])


@pytest.mark.parametrize("kind", TASK_TYPES.names())
@pytest.mark.parametrize("method", LOSSES.names())
def test_every_loss_gives_a_finite_scalar_with_gradient_and_none_to_the_teacher(method, kind):
    logits, labels, mask = _case(kind)
    student = torch.zeros_like(logits, requires_grad=True)
    teacher = logits.clone().requires_grad_(True)
    # a per-batch confidence: the dataset-level ones (the default among them) arrive precomputed in the batch
    loss = build_loss(DistillConfig(method=method, confidence="true_class", sync_warmup_steps=0), {"t": kind})
    batch = {"labels": {"t": labels}, "label_mask": {"t": mask}}
    if getattr(loss, "trains_teacher", False):  # the teacher is part of the model: only its own CE may train it
        out = loss({"logits": {"t": student}, "teacher_logits": {"t": teacher}}, batch)
        own = torch.autograd.grad(task_type(kind).hard_loss(teacher, labels)[mask].mean(), teacher, retain_graph=True)[0]
    else:
        out = loss({"logits": {"t": student}}, {**batch, "teacher_logits": {"t": teacher}})
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    if getattr(loss, "trains_teacher", False):
        assert torch.allclose(teacher.grad, own, atol=1e-6)
    else:
        assert teacher.grad is None


@pytest.mark.parametrize("kind", TASK_TYPES.names())
def test_every_task_type_round_trips_labels_and_scores_a_perfect_prediction(kind):
    tt = task_type(kind)
    classes = {"binary": ["0", "1"], "multiclass": ["a", "b", "c"], "multilabel": ["x", "y"]}[kind]
    raw = {"binary": [0, 1, 1, None, "true"], "multiclass": ["a", "c", "b", None, "a"],
           "multilabel": ["x|y", "", "y", None, "x"]}[kind]
    y, labelled, parsed_classes, bad = tt.parse_labels(raw, None if kind != "multilabel" else classes)
    assert labelled.tolist() == [True, True, True, False, True] and not bad.any()
    keep = torch.from_numpy(labelled)
    y = torch.from_numpy(y)[keep]
    n_out = tt.n_outputs(parsed_classes)
    # Logits that put (almost) all mass on the true labels.
    if kind == "multiclass":
        logits = torch.nn.functional.one_hot(y, n_out).float() * 20 - 10
    else:
        logits = (y.reshape(len(y), -1).float() * 20 - 10)
    probs = tt.probs(logits)
    thresholds = tt.tune_thresholds(probs.numpy(), y.numpy())
    assert tt.metrics(probs.numpy(), y.numpy(), thresholds)["f1"] == pytest.approx(1.0)
    assert tt.correct(probs, y).all()
    decoded = tt.decode(probs.numpy(), thresholds[0] if kind == "binary" else thresholds, parsed_classes)
    assert len(decoded) == len(y)
    assert tt.hard_loss(logits, y).max() < 1e-3


@pytest.mark.parametrize("name", ENCODERS.names())
def test_every_encoder_builds_offline_or_asks_for_a_local_path(name):
    try:
        encoder = create_encoder(name)
    except (EncoderError, TypeError) as err:  # needs a local checkpoint (and the arch for timm/open_clip)
        assert "path" in str(err) or "arch" in str(err)
        return
    assert encoder.fingerprint()
    if isinstance(encoder, FrameEncoder):
        assert encoder(torch.rand(2, 3, 32, 32)).shape == (2, encoder.dim)
    else:
        assert isinstance(encoder, TextEncoder)
        tokens, mask, pooled = encoder(["a title", ""])
        assert tokens.shape[0] == 2 and tokens.shape[-1] == encoder.dim and pooled.shape == (2, encoder.dim)


@pytest.mark.parametrize("kind", TASK_TYPES.names())
def test_every_task_type_inverts_its_probabilities(kind):
    tt = task_type(kind)
    logits, labels, _ = _case(kind)
    back = tt.probs(tt.logits_from_probs(tt.probs(logits), logits))
    assert torch.allclose(back, tt.probs(logits), atol=1e-5)
    assert tt.label_probs(labels, tt.probs(logits)).shape == tt.probs(logits).shape
