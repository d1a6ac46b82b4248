"""Strict types (issue 15 item 11): values in study files, training configs and condition
parameters are checked, never coerced; an empty study file is an error; the library's
sensor noise refuses images that are not [0, 1] channels-first signals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from binsense.errors import BinsenseError
from binsense.evaluate import conditions as _conditions  # noqa: F401  (registers kinds)
from binsense.evaluate.conditions import make_condition
from binsense.noise import SensorNoise
from binsense.study.schema import StudyFileError, load_study
from binsense.train import TrainConfig
from binsense.train.config import CHECK_DEVICE, SEED_MAX


def _condition_section() -> str:
    """The name of a study file's condition blocks (``[[condition]]``, formerly
    ``[[evaluate]]``)."""
    from binsense.study import schema

    return "condition" if "condition" in schema._SECTIONS else "evaluate"


# ---------------------------------------------------------------- TrainConfig


@pytest.mark.parametrize(
    "fields",
    [
        {"epochs": True},
        {"batch_size": "32"},
        {"lr": "0.1"},
        {"flip": "true"},
        {"flip": 1},
        {"seed": -1},
        {"seed": SEED_MAX + 1},
        {"seed": 1.0},
        {"threads": 0},
        {"threads": 100_000},
        {"lr": math.inf},
        {"lr": math.nan},
        {"device": "tpu"},
        {"device": "cuda:x"},
        {"train_noise": {"type": "column_offset", "level": ["0.05"]}},
        {"train_noise": {"type": "column_offset", "level": "0.05"}},
        {"train_noise": {"type": "column_offset", "level": 1.5}},
        {"train_noise": {"type": "column_offset", "level": [0.1, 0.05]}},
        {"train_noise": {"type": "column_offset", "level": [0.05, 2]}},
        {"train_noise": {"type": "column_offset", "level": 0.05, "adc_bits": 8.0}},
    ],
)
def test_train_config_rejects_what_it_would_have_coerced(fields) -> None:
    with pytest.raises(ValidationError):
        TrainConfig(**fields)


def test_train_config_accepts_integers_for_numbers_and_lists_for_ranges() -> None:
    config = TrainConfig(
        lr=1, weight_decay=0, warmup=0, seed=SEED_MAX, threads=1024,
        train_noise={"type": "column_offset", "level": [0, 1]},
    )  # fmt: skip
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.train_noise is not None and config.train_noise.level == (0.0, 1.0)
    # a checkpoint's config (JSON: the range is a list) reads back to the same config
    again = TrainConfig(**json.loads(json.dumps(config.to_dict())))
    assert again == config and again.config_hash() == config.config_hash()
    assert TrainConfig(train_noise={"type": "row_gain", "level": 0}).train_noise.level == 0.0


def test_sensor_level_above_full_scale_is_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match=r"500 % of full scale.*did you mean 0.05"):
        TrainConfig(train_noise={"type": "column_offset", "level": 5})


def test_device_syntax_always_availability_only_when_asked() -> None:
    """A GPU-trained config (checkpoint, study) stays readable on a machine without one."""
    assert TrainConfig(device="cuda:7").device == "cuda:7"
    if torch.cuda.device_count() <= 7:
        with pytest.raises(ValidationError, match="cuda:7"):
            TrainConfig.model_validate({"device": "cuda:7"}, context=CHECK_DEVICE)
    assert TrainConfig.model_validate({"device": "cpu"}, context=CHECK_DEVICE).device == "cpu"


# ---------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("sensor_noise", {"type": "column_offset", "level": "0.05"}),
        ("sensor_noise", {"type": "column_offset", "level": True}),
        ("sensor_noise", {"type": "column_offset", "level": 0.05, "seed": "1"}),
        ("sensor_noise", {"type": "column_offset", "level": 0.05, "per_channel": 1}),
        ("sensor_noise", {"type": "column_offset", "level": math.nan}),
        ("weight_noise", {"eta": "0.1"}),
        ("bn_bits", {"bits": 8.0}),
    ],
)
def test_conditions_are_strict(kind, params) -> None:
    with pytest.raises(ValidationError):
        make_condition(kind, **params)


def test_conditions_accept_integers_for_numbers() -> None:
    assert make_condition("sensor_noise", type="column_offset", level=0).level == 0.0
    assert make_condition("weight_noise", eta=1).eta == 1.0


# ---------------------------------------------------------------- study files


def _study(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[train]\nepochs = true\n", "[train] 'epochs' must be an integer, got True"),
        ('[train]\nbatch_size = "32"\n', "[train] 'batch_size' must be an integer, got '32'"),
        ("[train]\nseed = -1\n", "[train] 'seed' must be greater than or equal to 0"),
        ("[train]\n[train.grid]\nseed = [0, -1]\n", "[train.grid] 'seed'"),
        (
            '[[{section}]]\nkind = "sensor_noise"\ntype = "column_offset"\nlevel = ["0.05"]\n',
            "'level' must be a number, got '0.05'",
        ),
        ("", "the study file is empty"),
        ("# only a comment\n\n", "the study file is empty"),
    ],
)
def test_study_files_are_strict(tmp_path, text, words) -> None:
    path = _study(tmp_path, text.format(section=_condition_section()))
    with pytest.raises(StudyFileError) as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}:") and words in str(info.value)


def test_study_files_accept_integers_for_numbers(tmp_path) -> None:
    section = _condition_section()
    path = _study(
        tmp_path,
        f'[train]\nlr = 1\nepochs = 1\n[[{section}]]\nkind = "sensor_noise"\n'
        'type = "column_offset"\nlevel = [0, 1]\n',
    )
    study = load_study(path)
    assert study.trainings[0].config.lr == 1.0
    assert sorted(e.condition.level for e in study.evaluations) == [0.0, 1.0]


# ---------------------------------------------------------------- SensorNoise.apply


def test_sensor_noise_apply_checks_its_input() -> None:
    noise = SensorNoise("column_offset", 0.05)
    x = torch.rand(2, 3, 8, 8)
    assert noise.apply(x, 0).shape == x.shape
    channels_last_memory = x.to(memory_format=torch.channels_last)  # same values: fine
    assert torch.equal(noise.apply(channels_last_memory, 0), noise.apply(x, 0))
    assert noise.apply_instances(x, [0, 1]).shape == (2, *x.shape)
    one_nan = x.clone()
    one_nan[1, 2, 3, 4] = math.nan
    for bad, words in [
        (one_nan, "NaN"),
        (x * 2, r"images in \[0, 1\]"),
        (x - 0.5, r"got values in \[-"),
        (x * 255, "pixel / 255"),
        (x.permute(0, 2, 3, 1), "channels-last"),
        (torch.rand(4, 28, 28, 1), "channels-last"),
    ]:
        with pytest.raises(BinsenseError, match=words):
            noise.apply(bad, 0)
        with pytest.raises(BinsenseError, match=words):
            noise.apply_instances(bad, [0])
    with pytest.raises(BinsenseError, match="float images"):
        noise.apply((x * 255).to(torch.uint8), 0)
