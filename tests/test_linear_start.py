"""``model.wide_init=logreg``: the wide path starts at the validation-tuned logistic regression on its own inputs,
the deep heads at zero, and training keeps that start unless it lowers the validation loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from conftest import make_dataset
from cpfd.config import ModelConfig, load_config
from cpfd.data import load_dataset
from cpfd.evaluate.references import C_GRID
from cpfd.models.build import build_student, build_teacher, load_student
from cpfd.train.linear_start import start_from_logistic_regression, wide_inputs
from cpfd.train.loop import make_fabric
from cpfd.train.schedule import distill

WIDE = ["model.wide=true", "model.wide_init=logreg", "model.d_model=32", "train.progress=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_dataset(make_dataset(tmp_path_factory.mktemp("ls") / "ds", n=200))


def _sklearn_pipeline_logits(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> np.ndarray:
    """An independent fit: scikit-learn's own pipeline, C chosen by validation log-loss."""
    best, best_loss = None, np.inf
    for c in C_GRID:
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x[train], y[train])
        loss = -np.mean(pipe.predict_log_proba(x[val])[np.arange(len(val)), np.searchsorted(pipe.classes_, y[val])])
        if loss < best_loss:
            best, best_loss = pipe, loss
    return best.decision_function(x)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_started_model_predicts_its_logistic_regression(data, role):
    cfg = load_config(overrides=WIDE)
    torch.manual_seed(0)
    model = (build_student if role == "student" else build_teacher)(data, cfg)
    train = data.indices("train", labelled_only=True)
    val = data.indices("val", labelled_only=True)
    start_from_logistic_regression(model, data, train)
    model.eval()
    rows = np.concatenate([train, val])
    x = wide_inputs(model, data, rows)
    assert x.shape[1] == 6 + (2 * 3 if role == "teacher" else 0)  # 6 features (+ [z ; missing] of 3 privileged)
    batch = {k: v[torch.from_numpy(rows)].float() for k, v in data.student_inputs.items()}
    with torch.no_grad():
        out = model(**batch, privileged=data.privileged[torch.from_numpy(rows)]) if role == "teacher" else model(**batch)
    fit_rows, val_rows = np.arange(len(train)), len(train) + np.arange(len(val))
    spam = data.labels["spam"].numpy()[rows]
    expected = _sklearn_pipeline_logits(x, spam, fit_rows, val_rows)
    np.testing.assert_allclose(out["logits"]["spam"][:, 0].numpy(), expected, atol=2e-3)
    # Multiclass: the same log-odds between any two classes as scikit-learn's multinomial fit.
    category = data.labels["category"].numpy()[rows].astype(int)
    pipe_logits = _sklearn_pipeline_logits(x, category, fit_rows, val_rows)
    ours = out["logits"]["category"].numpy()
    np.testing.assert_allclose(ours - ours[:, :1], pipe_logits - pipe_logits[:, :1], atol=2e-3)
    tags = data.labels["tags"].numpy()[rows]
    for k in range(tags.shape[1]):  # multilabel: one binary regression per label
        np.testing.assert_allclose(out["logits"]["tags"][:, k].numpy(),
                                   _sklearn_pipeline_logits(x, tags[:, k], fit_rows, val_rows), atol=2e-3)
    # The deep heads start at zero, so the start is the regression alone.
    assert all(float(h.weight.detach().abs().sum()) == 0.0 for h in model.heads.heads.values())


def test_training_keeps_the_start_unless_validation_loss_improves(data, tmp_path):
    # A learning rate this large wrecks every step, so the restored best checkpoint must be the start.
    cfg = load_config(overrides=WIDE + ["train.epochs=2", "train.min_steps=0", "train.lr=50", "distill.method=none"])
    metrics = distill(data, cfg, tmp_path / "student", make_fabric(cfg.train))
    assert metrics["best_epoch"] == -1
    history = json.loads((tmp_path / "student" / "history.json").read_text())["epochs"]
    assert history[0]["epoch"] == -1 and history[0]["step"] == 0
    assert all(h["val/loss"] > history[0]["val/loss"] for h in history[1:])
    torch.manual_seed(0)
    fresh = build_student(data, cfg)
    start_from_logistic_regression(fresh, data, data.indices("train", labelled_only=True))
    restored = load_student(tmp_path / "student", data)
    rows = torch.from_numpy(data.indices("test"))
    batch = {k: v[rows].float() for k, v in data.student_inputs.items()}
    with torch.no_grad():
        a, b = fresh.eval()(**batch)["logits"], restored(**batch)["logits"]
    for task in a:
        torch.testing.assert_close(a[task], b[task])


def test_logreg_start_needs_the_wide_path():
    with pytest.raises(ValueError, match="model.wide=true"):
        ModelConfig(wide_init="logreg")


def test_one_class_in_train_gets_the_top_logit_and_no_weights():
    from cpfd.train.linear_start import MISSING_CLASS_LOGIT, _linear_layer

    x = np.random.default_rng(0).normal(size=(20, 3))
    y = np.full(20, 2.0)
    weight, bias = _linear_layer(x, y, 4, False, np.arange(15), np.arange(15, 20))
    assert np.all(weight == 0)
    assert bias.tolist() == [MISSING_CLASS_LOGIT, MISSING_CLASS_LOGIT, 0.0, MISSING_CLASS_LOGIT]
