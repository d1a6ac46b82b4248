"""The study runner's ``[evaluation] engine = "binsense"``: the deployed integer program
gives the rows PyTorch gives (accuracy, loss, n), one program per model state, PyTorch
where the model does not deploy, and the engine of each row in the store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from binsense.data import dataset_info
from binsense.deploy import convert
from binsense.deploy import program as program_module
from binsense.evaluate.conditions import Clean
from binsense.models import build_model
from binsense.study import execute as runner_module
from binsense.study.runner import run_study
from binsense.study.schema import StudyFileError, load_study

STUDY = """\
[study]
name = "engine"

[train]
dataset = "{data}"
model = "mnist_bnn"
model_options = {{ width = 0.25 }}
epochs = 1
batch_size = 16
threads = 1

[[condition]]
kind = "clean"

[[condition]]                 # float BN: the trained model's program; bn_bits 4: the next one
kind = "sensor_noise"
type = "column_offset"
level = 0.1
bn_bits = [32, 4]
draws = 2

[[condition]]                 # the same model state as sensor noise at bn_bits 4
kind = "bn_bits"
bits = 4

[[condition]]                 # latent weights: still ±1 after the sign, converted per draw
kind = "weight_noise"
eta = 0.5
draws = 1

[[condition]]                 # noise on the ±1 weights themselves: does not deploy
kind = "weight_noise"
eta = 0.1
binarized = true
draws = 1

[evaluation]
batch_size = 16
{engine}
"""


def _write(folder: Path, data: str, engine: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "engine.toml"
    path.write_text(STUDY.format(data=data, engine=engine))
    return path


def _rows(db: Path) -> dict[tuple[str, int], dict]:
    with sqlite3.connect(db) as conn:
        cur = conn.execute(
            "SELECT condition_id, draw, kind, params, accuracy, loss, n, versions FROM results"
        )
        cols = [c[0] for c in cur.description]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    return {(r["condition_id"], r["draw"]): r for r in rows}


def test_engine_rows_equal_pytorch_rows(tiny_data, tmp_path, monkeypatch):
    torch_path = _write(tmp_path / "pytorch", tiny_data)
    engine_path = _write(tmp_path / "binsense", tiny_data, 'engine = "binsense"')
    converted = []
    convert = program_module.convert

    def counting_convert(model):
        converted.append(1)
        return convert(model)

    monkeypatch.setattr(program_module, "convert", counting_convert)
    notes: list[str] = []
    a = run_study(torch_path, progress=False, log=lambda s: None)
    assert not converted  # the default engine never converts
    b = run_study(engine_path, progress=False, log=notes.append)
    assert a.failed == b.failed == 0 and a.evaluated == b.evaluated == 8

    rows_a = _rows(a.study.store_path)
    rows_b = _rows(b.study.store_path)
    assert rows_a.keys() == rows_b.keys()  # the engine is not part of the condition ids
    kinds = {}
    for key, ra in rows_a.items():
        rb = rows_b[key]
        assert (rb["accuracy"], rb["loss"], rb["n"]) == (ra["accuracy"], ra["loss"], ra["n"])
        assert ra["n"] == 30
        va, vb = json.loads(ra["versions"]), json.loads(rb["versions"])
        assert va["engine"] == "pytorch" and "engine_fallback" not in va
        params = json.loads(rb["params"])
        kinds[key] = (rb["kind"], params.get("binarized", False), vb)

    for kind, binarized, versions in kinds.values():
        if kind == "weight_noise" and binarized:  # non-±1 weights: PyTorch stands in
            assert versions["engine"] == "pytorch"
            assert "does not deploy" in versions["engine_fallback"]
        else:
            assert versions["engine"] == "binsense", (kind, versions)
            assert versions["engine_kernel"]
    # one program for the trained model (clean, sensor noise at float BN), one for BN at
    # 4 bits (bn_bits 4 and sensor noise at bn_bits 4, 3 draws), one per weight-noise draw
    assert len(converted) == 4
    assert sum("evaluated by PyTorch" in n for n in notes) == 1  # one notice per reason

    # a second run computes nothing again, whatever the engine
    again = run_study(torch_path.with_name("engine.toml"), progress=False, log=lambda s: None)
    assert again.evaluated == 0


def test_engine_option_is_strict_and_not_in_condition_ids(tiny_data, tmp_path):
    plain = load_study(_write(tmp_path / "a", tiny_data))
    engine = load_study(_write(tmp_path / "b", tiny_data, 'engine = "binsense"'))
    assert plain.eval.engine == "pytorch" and engine.eval.engine == "binsense"
    ids = [e.condition_id for e in plain.evaluations]
    assert ids == [e.condition_id for e in engine.evaluations]
    with pytest.raises(StudyFileError, match="did you mean 'binsense'"):
        load_study(_write(tmp_path / "c", tiny_data, 'engine = "binsens"'))
    with pytest.raises(StudyFileError, match="'engine' must be"):
        load_study(_write(tmp_path / "d", tiny_data, "engine = 1"))


class _Batch:
    """A loader of one batch on the CPU (what :class:`_Programs` reads of a loader)."""

    device = torch.device("cpu")

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __iter__(self):
        yield self.x, torch.zeros(len(self.x), dtype=torch.long)


def test_engine_check_holds_the_deployed_order_not_pytorchs(monkeypatch):
    """The engine's logits equal the trained model's with its float layers summed in the
    deployed order (``DeployedModel.reference``), not PyTorch's own order, which changes
    with the batch and the CPU and so flips signs at near ties (a trained CNV on CIFAR-10
    JPEGs: logits 2.4e-6 apart on all of the first 16 images). Here the first conv's own
    forward is made to differ from the deployed order (by more than an ulp, so that random
    weights flip signs too): the engine is still used."""
    model = build_model("cnv", dataset_info("cifar10"), width=0.125).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    float_conv = convert(model).float_layers(model)[0]
    forward = type(float_conv).forward

    def other_order(self, inp):
        return forward(self, inp) + 0.05

    monkeypatch.setattr(type(float_conv), "forward", other_order)
    with torch.no_grad():
        assert not torch.equal(model(x), convert(model)(x))
    program, why = runner_module._Programs().get(model, Clean(), _Batch(x))
    assert why == "" and program is not None
