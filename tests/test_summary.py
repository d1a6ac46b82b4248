"""Model size in bits and binary / float MACs (binsense.compress.summary), by hand."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from torch import Tensor, nn

from binsense.compress import BITS_PER_MBIT, add_summary_command, summarize_model, summary
from binsense.compress.summary import auto_threshold_bits
from binsense.data import DatasetInfo, dataset_info
from binsense.encoders import FloatEncoder, InputEncoder
from binsense.errors import BinsenseError
from binsense.layers import BinaryConv2d, BinaryLinear
from binsense.layers.block import BinaryBlock
from binsense.layers.design import DeSign
from binsense.models import RecipeModel, build_model, check_model
from binsense.quant.sign import SteSign

INFO = DatasetInfo(
    name="toy", num_classes=10, in_channels=3, image_size=(8, 8), mean=(0.5,) * 3,
    std=(0.25,) * 3, classes=tuple(str(i) for i in range(10)),
)  # fmt: skip
SHAPE = (3, 8, 8)


def small_model(act1: nn.Module | None = None) -> RecipeModel:
    """float conv 3->8 + BN + sign, binary conv 8->16 + BN + sign, binary linear head + BN."""
    blocks = nn.Sequential(
        BinaryBlock(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), SteSign()),
        BinaryBlock(BinaryConv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), act1 or SteSign()),
        nn.Flatten(),
    )
    head = BinaryBlock(BinaryLinear(16 * 8 * 8, 10), nn.BatchNorm1d(10), nn.Identity())
    return RecipeModel(FloatEncoder(INFO), blocks, head)


def test_bit_count_by_hand():
    model = small_model().train()
    s = summary(model, SHAPE)
    # encoder: mean + std of 3 channels, 32 bits each
    enc = 6 * 32
    # float conv 3->8 (216 float weights), its BN + sign: 8 real thresholds (32 bits)
    conv0, thr0 = 8 * 3 * 9 * 32, 8 * 32
    # binary conv 8->16: 1152 one-bit weights; BN + sign on a popcount of fan-in 72:
    # 16 integer thresholds of ceil(log2(72 + 2)) + 1 = 8 bits
    assert auto_threshold_bits(72) == 8
    conv1, thr1 = 16 * 8 * 9, 16 * 8
    # binary head 1024 -> 10 and its norm without sign: (a, b) per class at 32 bits
    head, head_norm = 1024 * 10, 2 * 10 * 32
    assert s.total_bits == enc + conv0 + thr0 + conv1 + thr1 + head + head_norm == 19_520
    assert (s.params_1bit, s.params_kbit, s.params_32bit) == (1152 + 10_240, 16, 6 + 216 + 8 + 20)
    assert s.mbit == 19_520 / 2**20 and BITS_PER_MBIT == 2**20
    # MACs: the float conv reads real pixels, the binary conv and head read signs
    assert s.float_macs == 8 * 8 * 8 * 27 == 13_824
    assert s.binary_macs == 16 * 8 * 8 * 72 + 1024 * 10 == 83_968
    assert s.binary_mac_share == pytest.approx(83_968 / (83_968 + 13_824))
    assert not s.fully_binary and s.float_mac_layers() == ["blocks.0.conv"]
    rows = {r.name: r for r in s.rows}
    assert rows["blocks.1.conv"].input == "±1" and rows["blocks.0.conv"].input == "real"
    assert rows["blocks.1.act"].params_kbit == 16 and rows["blocks.1.norm"].bits == 0
    assert rows["blocks.1.conv"].output_shape == (16, 8, 8)
    assert model.training and all(m.training for m in model.modules())  # flags restored
    table = s.table()
    assert "19,520 bits" in table and "fully binary: no (float MACs in blocks.0.conv)" in table
    json.dumps(s.to_dict())
    assert s.to_dict()["totals"]["total_bits"] == 19_520


def test_bit_options_change_the_deployed_widths():
    model = small_model()
    s = summary(model, SHAPE, threshold_bits=16)
    assert s.total_bits == 19_520 + 16 * (16 - 8)
    s = summary(model, SHAPE, bn_bits=16)  # real thresholds (8) and head (a, b) (20) at 16 bits
    assert s.total_bits == 19_520 - (8 + 20) * 16
    assert (s.params_kbit, s.params_32bit) == (16 + 8 + 20, 250 - 28)
    with pytest.raises(BinsenseError, match="threshold_bits must be an integer"):
        summary(model, SHAPE, threshold_bits=0)


@pytest.mark.parametrize("kernel", ["2x2", "2x2x4_shift"])
def test_design_block_counts_thresholds_per_channel_and_position_class(kernel):
    s = summary(small_model(DeSign(kernel, "approx_sign")), SHAPE)
    act = next(r for r in s.rows if r.name == "blocks.1.act")
    assert act.params_kbit == 16 * 2 * 2  # C * m * n
    assert act.bits == 16 * 2 * 2 * 8
    assert s.total_bits == 19_520 - 16 * 8 + 64 * 8


def test_block_without_norm_compares_at_a_fixed_point():
    model = small_model()
    model.blocks[1].norm = nn.Identity()
    s = summary(model, SHAPE)
    assert next(r for r in s.rows if r.name == "blocks.1.act").bits == 0
    assert s.total_bits == 19_520 - 16 * 8


class Planes(InputEncoder):
    """A 2-level thermometer per channel (codes 85, 170): ±1 planes."""

    binary = True

    def __init__(self) -> None:
        super().__init__()
        self.out_channels = 6
        self.register_buffer("codes", torch.tensor([[85, 170]] * 3))

    def thresholds_codes(self) -> Tensor:
        return self.codes.clone()

    def forward(self, x: Tensor) -> Tensor:
        code = (x * 255).round().unsqueeze(2)
        planes = code >= self.codes.view(1, 3, 2, 1, 1).float()
        return (planes.float() * 2 - 1).flatten(1, 2)


def test_fully_binary_with_a_binary_encoder_counts_its_code_thresholds():
    blocks = nn.Sequential(
        BinaryBlock(BinaryConv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), SteSign()),
        nn.Flatten(),
    )
    head = BinaryBlock(BinaryLinear(8 * 8 * 8, 10), nn.BatchNorm1d(10), nn.Identity())
    s = summary(RecipeModel(Planes(), blocks, head), SHAPE)
    enc = s.rows[0]
    assert (enc.name, enc.params_kbit, enc.bits) == ("encoder", 6, 6 * 8)
    assert s.fully_binary and s.float_macs == 0 and s.binary_mac_share == 1.0
    # thresholds after a popcount of fan-in 54: ceil(log2(56)) + 1 = 7 bits
    assert s.total_bits == 48 + 6 * 8 * 9 + 8 * 7 + 512 * 10 + 20 * 32
    assert "fully binary: yes" in s.table()


def test_registry_bnn_its_float_twin_and_the_meta_device():
    bnn = summarize_model("mnist_bnn", options={"width": 0.25})
    assert not bnn.fully_binary and bnn.float_mac_layers() == ["blocks.0.conv"]
    assert bnn.binary_macs > 0
    twin = summarize_model("mnist_bnn_float", options={"width": 0.25})
    assert twin.binary_macs == 0 and twin.params_1bit == 0 and not twin.fully_binary
    assert twin.total_bits > 10 * bnn.total_bits
    info = dataset_info("mnist")
    meta = summary(check_model("mnist_bnn", info, width=0.25), (1, 28, 28))
    real = summary(build_model("mnist_bnn", info, width=0.25), (1, 28, 28))
    assert meta.totals() == real.totals() == bnn.totals()


def _run_cli(argv: list[str], *, reader: bool = True) -> int:
    """``binsense summary`` as the CLI adds it (with its checkpoint reader)."""
    from binsense.cli import _read_summary_checkpoint

    parser = argparse.ArgumentParser(prog="binsense")
    add_summary_command(
        parser.add_subparsers(dest="command", required=True),
        read_checkpoint=_read_summary_checkpoint if reader else None,
    )
    args = parser.parse_args(["summary", *argv])
    return args.func(args)


def test_cli_max_mbit_exit_code(capsys):
    small = ["--model", "mnist_bnn", "--width", "0.25", "--model-option", "head=binary"]
    total = summarize_model("mnist_bnn", options={"width": 0.25}).total_bits
    assert _run_cli([*small, "--max-mbit", "0.01"]) == 1
    out = capsys.readouterr()
    assert "mnist_bnn on mnist" in out.out
    over = out.err.strip().splitlines()
    assert len(over) == 1 and over[0].startswith("over budget:")
    assert f"{total - math.floor(0.01 * BITS_PER_MBIT):,} bits" in over[0]
    assert _run_cli([*small, "--max-mbit", "1"]) == 0
    assert "within budget" in capsys.readouterr().out
    assert _run_cli([*small, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["total_bits"] == total
    with pytest.raises(BinsenseError, match="--max-mbit must be"):
        _run_cli([*small, "--max-mbit", "-1"])
    with pytest.raises(BinsenseError, match="needs --model"):
        _run_cli([])
    with pytest.raises(BinsenseError, match="unknown model"):
        _run_cli(["--model", "mnist_bn"])


def test_cli_summarises_a_checkpoint(tiny_data, tmp_path, capsys):
    from binsense.train import TrainConfig, train

    cfg = TrainConfig(dataset=tiny_data, model="mnist_bnn", model_options={"width": 0.25},
                      epochs=1, batch_size=32, seed=0)  # fmt: skip
    train(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    assert _run_cli(["--checkpoint", ckpt, "--max-mbit", "1"]) == 0
    out = capsys.readouterr().out
    assert "mnist_bnn on" in out and "within budget" in out
    with pytest.raises(BinsenseError, match="does not go with --checkpoint"):
        _run_cli(["--checkpoint", ckpt, "--model", "mnist_bnn"])
    # binsense.compress reads no checkpoint itself: without the CLI's reader, one line
    with pytest.raises(BinsenseError, match="needs a checkpoint reader") as e:
        _run_cli(["--checkpoint", ckpt], reader=False)
    assert "\n" not in str(e.value)


def test_real_weights_of_a_two_step_first_model_count_as_float():
    """``weight_quantizer = "none"`` keeps the binary layers' weights real: they are
    32-bit values and their MACs are not binary, though the activations are ±1."""
    info = dataset_info("cifar10")
    bnn = summary(build_model("cnv", info, width=0.25, head="float"), (3, 32, 32))
    real = build_model("cnv", info, width=0.25, head="float", weight_quantizer="none")
    step1 = summary(real, (3, 32, 32))
    assert step1.binary_macs == 0 < bnn.binary_macs
    assert step1.params_1bit == 0  # every weight is real (and the BNs are not thresholds)
    assert step1.params_32bit >= bnn.params_32bit + bnn.params_1bit
    assert step1.mbit > 20 * bnn.mbit
