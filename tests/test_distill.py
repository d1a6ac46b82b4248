"""Knowledge distillation: the loss by hand, a frozen teacher, a run through the trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binsense.compress import Distillation, distillation_loss, kd_loss
from binsense.compress.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE
from binsense.errors import BinsenseError


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_kd_loss_for_known_logits():
    teacher, student, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([0])
    # T = 2: p_t = softmax([1, 0]) = [e, 1] / (e + 1), p_s = [1/2, 1/2]
    p_t = [math.e / (math.e + 1), 1 / (math.e + 1)]
    kl = _kl(p_t, [0.5, 0.5])
    assert kl == pytest.approx(0.110_944, abs=1e-6)
    expected = 0.5 * math.log(2) + 0.5 * 4 * kl  # alpha CE + (1 - alpha) T^2 KL
    got = kd_loss(student, teacher, y, alpha=0.5, temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.item() == pytest.approx(0.568_462, abs=1e-6)
    # the defaults: ReActNet's pure distillation at T = 1 (no label term)
    assert (DEFAULT_ALPHA, DEFAULT_TEMPERATURE) == (0.0, 1.0)
    pure = kd_loss(student, teacher, torch.tensor([1]))
    assert pure.item() == pytest.approx(_kl(_softmax([2.0, 0.0]), [0.5, 0.5]), rel=1e-6)
    # averaged over the batch
    two = kd_loss(student.repeat(2, 1), teacher.repeat(2, 1), y.repeat(2), alpha=0.5,
                  temperature=2.0)  # fmt: skip
    assert two.item() == pytest.approx(expected, rel=1e-6)


def test_alpha_one_is_plain_cross_entropy_without_a_teacher_pass():
    class Refuses(nn.Module):
        def forward(self, x):
            raise AssertionError("the teacher must not run at alpha = 1")

    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    plain = F.cross_entropy(logits, y)
    assert Distillation(Refuses(), alpha=1.0)(logits, y, torch.randn(5, 4)).item() == pytest.approx(
        plain.item()
    )
    assert kd_loss(logits, torch.randn(5, 3), y, alpha=1.0).item() == pytest.approx(plain.item())


def test_teacher_is_frozen_in_eval_mode_and_gets_no_gradient():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).train()
    student = nn.Linear(4, 3)
    hook = distillation_loss(teacher, alpha=0.3, temperature=4.0)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    stats = teacher[1].running_mean.clone()
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    teacher.train()  # e.g. a caller switched the whole tree back: the hook distils in eval mode
    loss = hook(student(x), y, x)
    loss.backward()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert torch.equal(teacher[1].running_mean, stats)  # eval mode: statistics untouched
    with torch.no_grad():
        expected = kd_loss(student(x), teacher(x), y, alpha=0.3, temperature=4.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    "alpha, temperature, match",
    [
        (-0.1, 1.0, "alpha"), (1.5, 1.0, "alpha"), (float("nan"), 1.0, "alpha"),
        (True, 1.0, "alpha"), ("0.5", 1.0, "alpha"), (0.5, 0.0, "temperature"),
        (0.5, -2.0, "temperature"), (0.5, float("inf"), "temperature"),
    ],
)  # fmt: skip
def test_invalid_options_are_one_line_errors(alpha, temperature, match):
    with pytest.raises(BinsenseError, match=match) as e:
        Distillation(nn.Linear(2, 2), alpha, temperature)
    assert "\n" not in str(e.value)


def test_teacher_with_other_classes_is_an_error():
    hook = Distillation(nn.Linear(4, 5), alpha=0.5)
    x = torch.randn(2, 4)
    with pytest.raises(BinsenseError, match="do not match"):
        hook(torch.randn(2, 3), torch.tensor([0, 1]), x)


def test_teacher_is_a_model_not_a_path(tmp_path):
    """Reading a checkpoint is training's business (binsense.compress never imports
    binsense.train): a path is refused with one line saying how to load it."""
    with pytest.raises(BinsenseError, match="the teacher must be a model, got PosixPath") as e:
        Distillation(tmp_path / "teacher" / "checkpoint.pt")
    assert "binsense.train.load_model" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BinsenseError, match="the teacher must be a model, got str"):
        distillation_loss("checkpoint.pt")


def test_distillation_in_the_trainer(tiny_data, tmp_path):
    from binsense.train import TrainConfig, load_model, train
    from binsense.train.trainer import Hooks

    def config(model: str) -> TrainConfig:
        return TrainConfig(dataset=tiny_data, model=model, model_options={"width": 0.25},
                           epochs=1, batch_size=32, seed=1)  # fmt: skip

    teacher = train(config("mnist_bnn_float"), tmp_path / "teacher", progress=False,
                    log=lambda _: None)  # fmt: skip
    loaded, _ = load_model(tmp_path / "teacher" / "checkpoint.pt")
    hook = Distillation(loaded, alpha=0.2, temperature=2.0)
    student = train(config("mnist_bnn"), progress=False, log=lambda _: None,
                    hooks=Hooks(loss=hook))  # fmt: skip
    assert student.complete and math.isfinite(student.metrics[0]["train_loss"])
    assert not hook.teacher.training
    # the loaded teacher is the trained one
    for a, b in zip(hook.teacher.state_dict().values(), teacher.model.state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)
    # and the hook changed the objective: plain cross-entropy trains another student
    plain = train(config("mnist_bnn"), progress=False, log=lambda _: None)
    assert plain.metrics[0]["train_loss"] != student.metrics[0]["train_loss"]


def test_a_teacher_of_another_data_set_is_refused_before_training(tiny_data, tmp_path):
    from conftest import make_imagefolder
    from pydantic import ValidationError

    from binsense.train import TrainConfig, train

    base = dict(model="mnist_bnn", model_options={"width": 0.25}, epochs=1, batch_size=32)
    teacher = {"model": "mnist_bnn_float", "dataset": "mnist"}
    with pytest.raises(ValidationError, match="teacher of the same data set"):
        TrainConfig(dataset=tiny_data, **base, distill={"teacher": teacher})
    # a finished teacher checkpoint of another data set: refused when it is loaded,
    # before the student's first step (it used to fail after training, on a shape)
    other = f"imagefolder:{make_imagefolder(tmp_path / 'two', classes=2)}"
    train(TrainConfig(dataset=other, **base), tmp_path / "teacher", progress=False)
    student = TrainConfig(dataset=tiny_data, **base,
                          distill={"teacher_checkpoint": str(tmp_path / "teacher")})  # fmt: skip
    with pytest.raises(BinsenseError, match="teacher of the same data set") as err:
        train(student, tmp_path / "student", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "student" / "checkpoint.pt").exists()
