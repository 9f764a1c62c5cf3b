"""What the student can see, and the teacher's dense tower."""

from __future__ import annotations

import inspect

import pytest
import torch

from cpfd.config import ModelConfig, TeacherConfig
from cpfd.models import DenseTower, Student, Teacher

SHAPES = {"features": (6,)}
TASKS = {"spam": 1, "category": 3, "tags": 2}


def test_student_forward_cannot_take_privileged_inputs():
    params = inspect.signature(Student.forward).parameters
    assert not any("privileged" in name or "dense" in name for name in params)
    student = Student(SHAPES, TASKS, ModelConfig())
    with pytest.raises(TypeError):
        student(features=torch.randn(2, 6), privileged=torch.randn(2, 3))


def test_student_and_teacher_output_shapes():
    x, d = torch.randn(5, 6), torch.randn(5, 3)
    out = Student(SHAPES, TASKS, ModelConfig()).eval()(features=x)
    assert {k: v.shape[1] for k, v in out["logits"].items()} == TASKS
    teacher = Teacher(SHAPES, TASKS, ModelConfig(), TeacherConfig(), n_privileged=3).eval()
    t_out = teacher(features=x, privileged=d)
    assert t_out["embedding"].shape == (5, 64 + 64)  # [cls ; mlp(d)], late fusion
    with pytest.raises(ValueError, match="needs privileged"):
        teacher(features=x)


def test_trunks_are_identical_between_student_and_teacher():
    s = Student(SHAPES, TASKS, ModelConfig())
    t = Teacher(SHAPES, TASKS, ModelConfig(), TeacherConfig(), n_privileged=3)
    assert {k: v.shape for k, v in s.trunk.state_dict().items()} == {k: v.shape for k, v in t.trunk.state_dict().items()}


def test_dense_tower_standardises_on_train_and_masks_missing():
    tower = DenseTower(2, [4], [0, 1], group_dropout=0.0, dropout=0.0)
    train = torch.tensor([[1.0, float("nan")], [3.0, 10.0], [5.0, 10.0]])
    tower.fit(train)
    assert torch.allclose(tower.mean, torch.tensor([3.0, 10.0]))
    # std of [1, 3, 5] (population) = sqrt(8/3); the constant column gets std 1
    assert torch.allclose(tower.std, torch.tensor([(8 / 3) ** 0.5, 1.0]))
    seen = {}
    tower.mlp[0].register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    tower.eval()(torch.tensor([[3.0, float("nan")]]))
    assert torch.equal(seen["x"], torch.tensor([[0.0, 0.0, 0.0, 1.0]]))  # [z ; missing-mask]


def test_group_dropout_drops_whole_groups_in_training_only():
    tower = DenseTower(4, [4], [0, 0, 1, 1], group_dropout=0.5, dropout=0.0)
    seen = []
    tower.mlp[0].register_forward_hook(lambda m, i, o: seen.append(i[0]) or None)
    torch.manual_seed(0)
    tower.train()(torch.ones(256, 4))
    mask = seen[-1][:, 4:]
    assert torch.equal(mask[:, 0], mask[:, 1]) and torch.equal(mask[:, 2], mask[:, 3])
    assert 0.35 < mask[:, 0].mean() < 0.65
    tower.eval()(torch.ones(8, 4))
    assert seen[-1][:, 4:].sum() == 0


def test_numeric_features_are_standardised_with_train_statistics():
    from cpfd.models.fusion import VectorTokens

    tokens = VectorTokens(2, 8, 2)
    tokens.fit(torch.tensor([[50.0, 0.1], [70.0, 0.3]]))
    assert torch.allclose(tokens.mean, torch.tensor([60.0, 0.2])) and torch.allclose(tokens.std, torch.tensor([10.0, 0.1]))
    seen = {}
    tokens.proj.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    tokens(torch.tensor([[80.0, 0.2]]))
    assert torch.allclose(seen["x"], torch.tensor([[2.0, 0.0]]))


def test_teacher_trunk_dropout_zeroes_whole_rows_in_training_only():
    teacher = Teacher(SHAPES, TASKS, ModelConfig(dropout=0.0), TeacherConfig(trunk_dropout=0.5), n_privileged=3)
    torch.manual_seed(0)
    x, d = torch.randn(64, 6), torch.randn(64, 3)
    trunk_part = teacher.train()(features=x, privileged=d)["embedding"][:, :64]
    zero_rows = (trunk_part == 0).all(1)
    assert 0.3 < zero_rows.float().mean() < 0.7
    assert not (teacher.eval()(features=x, privileged=d)["embedding"][:, :64] == 0).all(1).any()


def test_heavy_tailed_privileged_columns_are_log_scaled():
    from cpfd.models.teacher import DenseTower

    tower = DenseTower(2, [4], [0, 1], 0.0, 0.0)
    heavy = torch.tensor([0.0] * 99 + [1000.0])  # skewness ≈ 9.85
    normal = torch.linspace(-1, 1, 100)
    tower.fit(torch.stack([heavy, normal], 1))
    assert tower.log_scale.tolist() == [True, False]
    # log1p(1000) = 6.9088; mean over 100 rows = 0.069088
    assert tower.mean[0].item() == pytest.approx(0.069088, abs=1e-5)
    assert tower.mean[1].item() == pytest.approx(0.0, abs=1e-6)


def test_teacher_auxiliary_loss_adds_the_towers_own_prediction():
    import math

    from cpfd.config import DistillConfig
    from cpfd.distill.losses import WithAuxiliary, build_loss

    base = build_loss(DistillConfig(method="none"), {"s": "binary"})
    loss = WithAuxiliary(base, 0.5)
    batch = {"labels": {"s": torch.tensor([1.0])}, "label_mask": {"s": torch.tensor([True])}}
    out = {"logits": {"s": torch.tensor([[0.0]])}, "aux_logits": {"s": torch.tensor([[math.log(3.0)]])}}
    # ln 2 + 0.5·(−ln 0.75) = 0.693147 + 0.143841
    assert loss(out, batch)["loss"].item() == pytest.approx(0.836988, abs=1e-5)


def test_linear_inputs_are_standardised_features_and_masked_means():
    shapes = {"features": (2,), "frames": (3, 4), "text": (2, 4)}
    student = Student(shapes, {"spam": 1}, ModelConfig(wide=True, n_cross_layers=0))
    tok = student.trunk.tokenizers["features"]
    tok.mean.copy_(torch.tensor([1.0, 2.0]))
    tok.std.copy_(torch.tensor([2.0, 4.0]))
    frames = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0], [100.0, 100.0, 100.0, 100.0]]])
    text = torch.tensor([[[0.0, 0.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]]])
    x = student.trunk.linear_inputs(features=torch.tensor([[3.0, 0.0]]), frames=frames,
                                    frames_mask=torch.tensor([[1, 1, 0]]), text=text, text_mask=None)
    # features: ((3-1)/2, (0-2)/4); frames: mean of the two kept = (2, 2, 2, 2), layer-normed = 0 (eps keeps it
    # finite); text: mean (0, 0, 0, 2) -> mean 0.5, population std sqrt(0.75) -> (-1/√3, -1/√3, -1/√3, √3)
    r = 3 ** 0.5
    expected = torch.tensor([[1.0, -0.5, 0, 0, 0, 0, -1 / r, -1 / r, -1 / r, r]])
    assert student.trunk.linear_dim == 10
    assert torch.allclose(x, expected, atol=1e-4)


def test_wide_student_adds_a_linear_path_to_the_logits():
    assert Student(SHAPES, TASKS, ModelConfig()).wide is None
    student = Student(SHAPES, {"spam": 1}, ModelConfig(wide=True)).eval()
    x = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, -1.0]])  # mean 0, std 1 before fitting: the inputs themselves
    with torch.no_grad():
        student.wide.heads["spam"].weight.copy_(torch.tensor([[0.5, 9.0, 1.0, 9.0, 9.0, 2.0]]))
        student.wide.heads["spam"].bias.fill_(0.25)
        deep = student.heads(student.trunk(features=x))["spam"]
        out = student(features=x)["logits"]["spam"]
    # 0.5*1 + 1*2 + 2*(-1) + 0.25 = 0.75
    assert torch.allclose(out - deep, torch.tensor([[0.75]]))


def test_wide_teacher_sees_student_inputs_and_privileged_features_linearly():
    teacher = Teacher(SHAPES, {"spam": 1}, ModelConfig(wide=True), TeacherConfig(), n_privileged=3).eval()
    assert teacher.wide.heads["spam"].in_features == 2 * 3 + 6  # [z ; missing] of the privileged + the inputs
    selfish = Teacher(SHAPES, {"spam": 1}, ModelConfig(wide=True), TeacherConfig(use_privileged=False), 0).eval()
    assert selfish.wide.heads["spam"].in_features == 6
    x, d = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, -1.0]]), torch.tensor([[0.0, 4.0, float("nan")]])
    with torch.no_grad():
        # weights on [z(3) ; missing(3) ; inputs(6)]: 1 on z_2, 3 on the third column's missing flag, 2 on x_6
        teacher.wide.heads["spam"].weight.copy_(torch.tensor([[0, 1.0, 0, 0, 0, 3.0, 0, 0, 0, 0, 0, 2.0]]))
        teacher.wide.heads["spam"].bias.zero_()
        linear = teacher.trunk.linear_inputs(features=x)
        cls = teacher.trunk(features=x)
        dense = teacher.tower(d)
        deep = teacher.heads(torch.cat([cls, dense], 1))["spam"]
        out = teacher(features=x, privileged=d)["logits"]["spam"]
        with pytest.raises(ValueError, match="linear"):
            teacher.fuse(cls, d)
    assert torch.allclose(linear, x)
    assert torch.allclose(out - deep, torch.tensor([[4.0 + 3.0 - 2.0]]))
