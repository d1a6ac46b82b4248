"""A deployed program's shapes and memory, known before it runs (issue 24, item 5.2): the
analytic walk equals the shapes of a real run, every geometry field is checked against
the input, and a program whose activations cannot fit is refused in one line before any
op runs (``--allow-large`` / ``BINSENSE_ALLOW_LARGE`` skip that)."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_deploy_file import _manifest, _payload, _write
from test_deploy_program import _calibrated
from torch import nn

from binsense import resources
from binsense.cli import main
from binsense.data import dataset_info
from binsense.deploy import convert, kernels
from binsense.deploy import ir as deploy_ops
from binsense.deploy.fileformat import load_deployed, save_deployed
from binsense.deploy.ir import (
    FlattenOp,
    MaxPoolInt,
    Op,
    OpList,
    PackedConv,
    PackedLinear,
    Threshold,
)
from binsense.deploy.program import DeployedModel
from binsense.deploy.shapes import op_footprint, op_output_shape
from binsense.errors import BinsenseError
from binsense.layers.binary import BinaryConv2d, BinaryLinear
from binsense.resources import ResourceError

#: Every op type of a program: none may run while shapes and memory are estimated.
_OP_TYPES = (
    deploy_ops.PackedConv, deploy_ops.PackedLinear, deploy_ops.MaxPoolInt,
    deploy_ops.Threshold, deploy_ops.PlanesInput, deploy_ops.FloatStage, deploy_ops.ToInt8,
    deploy_ops.FlattenOp, deploy_ops.ResidualOp, deploy_ops.Shuffle,
)  # fmt: skip

#: One model of each family: float first layer, binary encoder + DeSign, groups, CNV,
#: channel shuffle + code-table encoder + global pool, residual units.
_FAMILIES = [
    ("mnist_bnn", "mnist", {"width": 0.25}),
    ("mnist_bnn", "mnist", {"width": 0.25, "encoder": "nbc", "design": "2x2"}),
    ("vgg_small", "cifar10", {"width": 0.0625, "groups": 2, "design": "2x2x4_shift"}),
    ("vgg_small", "cifar10", {"width": 0.0625, "norm": "channel_affine", "head": "float"}),
    ("cnv", "cifar10", {"width": 0.0625, "design": "2x2x4_shift", "bn_affine": False}),
    ("compact_bnn", "cifar10", {"width": 0.125, "encoder": "glt"}),
    ("resnet18_bnn", "cifar10", {"width": 0.0625, "design": "2x2x4_shift", "design_coupled": True}),
]


class _Stray(Op):
    """An op type the shape walk does not know."""

    def __call__(self, x):
        return x


def _one_line(text: str) -> str:
    assert "\n" not in text.strip() and "Traceback" not in text, text
    return text


@pytest.fixture
def ops_run(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the op types that ran (every op type and the C kernel watched)."""
    calls: list[str] = []

    def watch(cls: type) -> None:
        real = cls.__call__

        def call(self, *args, **kwargs):
            calls.append(cls.__name__)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", call)

    for cls in _OP_TYPES:
        watch(cls)
    for name in ("conv2d_words", "gemm_packed"):
        real = getattr(kernels, name)

        def kernel(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(kernels, name, kernel)
    real_call = DeployedModel.__call__

    def call(self, x):
        calls.append("DeployedModel")
        return real_call(self, x)

    monkeypatch.setattr(DeployedModel, "__call__", call)
    return calls


@pytest.fixture
def tiny_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the machine has 1 kB free: every program is refused unless allowed."""
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device="cpu": 1000)
    monkeypatch.delenv("BINSENSE_ALLOW_LARGE", raising=False)


# ---------------------------------------------------------------- the walk


@pytest.mark.parametrize(("name", "dataset", "options"), _FAMILIES)
def test_walked_shapes_equal_a_real_run_and_no_op_runs(name, dataset, options, monkeypatch):
    deployed = convert(_calibrated(name, dataset, **options))
    info = dataset_info(dataset)
    shape = (info.in_channels, *info.image_size)
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    outputs = [y for _, y in deployed.trace(x)]
    real = [tuple(y.shape[1:]) for y in outputs]

    calls: list[str] = []
    for cls in _OP_TYPES:
        monkeypatch.setattr(cls, "__call__", lambda self, *a, _c=cls: calls.append(_c.__name__))
    walked = deployed.activation_shapes(shape)
    assert walked == real and not calls
    assert real[-1] == (info.num_classes,)
    for workspace in (False, True):
        needed = deployed.memory_bytes(shape, 3, workspace=workspace)
        # every element counted at 8 bytes: at least any op's real input and output
        sizes = [x.nbytes, *(y.nbytes for y in outputs)]
        assert needed >= max(a + b for a, b in itertools.pairwise(sizes))
        assert deployed.memory_bytes(shape, 30, workspace=workspace) == 10 * needed
        assert not calls
    assert deployed.memory_bytes(shape, 3, workspace=True) > deployed.memory_bytes(
        shape, 3, workspace=False
    )


def test_a_loaded_file_walks_like_its_program(tmp_path, ops_run):
    """A file's float stages are typed float ops rebuilt from its tensors (no module):
    the walk runs them on the meta device and leaves their tensors where they were."""
    model = _calibrated("resnet18_bnn", "cifar10", width=0.0625, design="2x2x4_shift")
    deployed = convert(model)
    loaded = load_deployed(save_deployed(deployed, tmp_path / "r.bsd"))
    assert loaded.activation_shapes((3, 32, 32)) == deployed.activation_shapes((3, 32, 32))
    assert loaded.memory_bytes((3, 32, 32), 7) == deployed.memory_bytes((3, 32, 32), 7)
    assert not ops_run
    assert not any(t.is_meta for s in loaded.float_stages() for f in s.ops
                   for t in f.spec()[1].values())  # fmt: skip
    x = torch.rand(2, 3, 32, 32)  # the walk left the float ops' tensors as they were (CPU)
    assert torch.equal(loaded(x), deployed(x)) and torch.equal(
        deployed(x), deployed.reference(model, x)
    )


def test_a_fully_convolutional_program_walks_any_image_size():
    deployed = convert(_calibrated("compact_bnn", "cifar10", width=0.125, encoder="glt"))
    for shape in [(3, 40, 48), (3, 9, 17)]:
        real = [tuple(y.shape[1:]) for _, y in deployed.trace(torch.rand(2, *shape))]
        assert deployed.activation_shapes(shape) == real


def test_the_pool_rule_equals_pytorch_on_every_small_geometry():
    """MaxPoolInt's shape rule against the pool itself, refusals included."""
    for k, s, p, d, ceil in itertools.product((1, 2, 3, 4), (1, 2, 3), (0, 1, 2), (1, 2), (0, 1)):
        pool = MaxPoolInt.of(nn.MaxPool2d(k, s, p, d, ceil_mode=bool(ceil)))
        for h in range(1, 10):
            shape = (2, h, h + 1)
            try:
                real = tuple(pool(torch.zeros(1, *shape, dtype=torch.int32)).shape[1:])
            except RuntimeError:
                real = None
            if real is not None and 0 in real:  # the integer fast path's empty map: refused
                real = None
            try:
                walked = op_output_shape(pool, shape)
            except BinsenseError:
                walked = None
            assert walked == real, (k, s, p, d, ceil, h)


def test_the_formula_on_a_hand_made_program(monkeypatch):
    """8 bytes x batch x max(in + out [+ work]); the documented fallback terms."""
    torch.manual_seed(0)
    conv = PackedConv.of(BinaryConv2d(4, 6, 3, padding=1))  # 4 -> 6 channels, 5x5 maps
    linear = PackedLinear.of(BinaryLinear(150, 10))
    ops = OpList({"conv": conv, "flat": FlattenOp(), "fc": linear})
    deployed = DeployedModel(ops)
    shape = (4, 5, 5)
    assert deployed.activation_shapes(shape) == [(6, 5, 5), (150,), (10,)]
    # conv: 100 in + 150 out; flatten 150 + 150; linear 150 + 10
    assert deployed.memory_bytes(shape, 2, workspace=False) == 8 * 2 * 300
    # conv work: 3 x (1 word x 64 bits x 7 x 7) + 150 + 4 x (6 x 5 x 5 x 1 word)
    conv_work = 3 * 64 * 49 + 150 + 4 * 150
    # linear work: 3 x (3 words x 64) + 4 x (10 x 3 words)
    assert op_footprint(linear, (150,), True) == ((10,), 160 + 3 * 192 + 4 * 30)
    assert deployed.memory_bytes(shape, 1, workspace=True) == 8 * (250 + conv_work)
    monkeypatch.setattr(kernels, "backend", lambda: "torch")  # default: where C does not run
    assert deployed.memory_bytes(shape, 1) == 8 * (250 + conv_work)
    monkeypatch.setattr(kernels, "backend", lambda: "avx2")
    assert deployed.memory_bytes(shape, 1) == 8 * 300


# ---------------------------------------------------------------- geometry against the input


def test_fields_that_do_not_fit_the_input_are_one_line_naming_the_op():
    torch.manual_seed(0)
    conv = PackedConv.of(BinaryConv2d(16, 8, 3, groups=2))  # 16 channels in 2 groups, no padding
    linear = PackedLinear.of(BinaryLinear(100, 10))
    cases = [
        ([conv], (12, 8, 8), "takes 16 channels (8 per group, 2 group(s)), got 12"),
        ([conv], (16, 2, 9), "3x3 kernel does not fit a 2x9 map"),
        ([conv], (16, 8, 8, 1), None),  # not an image shape
        ([FlattenOp(), linear], (1, 8, 8), "takes vectors of 100 values, got shape (64,)"),
        ([linear], (1, 10, 10), "takes vectors of 100 values"),
        (
            [
                conv,
                Threshold.from_spec(
                    {},
                    {
                        "tau": torch.zeros(7, dtype=torch.int64),
                        "flip": torch.ones(7, dtype=torch.int64),
                    },
                ),
            ],
            (16, 8, 8),
            "holds 7 channel thresholds",
        ),  # fmt: skip
        ([_Stray()], (1, 8, 8), "does not know the op type _Stray"),
    ]
    for ops, shape, words in cases:
        deployed = DeployedModel(OpList((str(i), op) for i, op in enumerate(ops)))
        with pytest.raises(BinsenseError) as e:
            deployed.check_memory(shape, 1, allow=True)
        text = _one_line(str(e.value))
        assert not isinstance(e.value, ResourceError)
        if words is not None:
            assert words in text and "op '" in text, text


def test_a_float_stage_that_does_not_fit_its_input_is_one_line():
    deployed = convert(_calibrated("mnist_bnn", "mnist", width=0.25))
    with pytest.raises(BinsenseError, match=r"op 'input': .*cannot take shape \(3, 28, 28\)"):
        deployed.activation_shapes((3, 28, 28))
    with pytest.raises(BinsenseError, match="op 'b3_conv': PackedLinear takes vectors"):
        deployed.activation_shapes((1, 32, 32))  # the flattened map no longer fits
    with pytest.raises(BinsenseError, match=r"\(C, H, W\) positive integers"):
        deployed.activation_shapes((1, 0, 28))


def test_a_crafted_file_whose_ops_do_not_chain_is_refused_by_infer(
    tmp_path, tiny_data, capsys, ops_run
):
    """Every op of the file is valid, but without its pool the flattened map no longer
    fits the linear layer: one line from the walk, exit 2, before any op runs (it was
    an "unexpected RuntimeError", exit 1, from the first batch)."""
    model = _calibrated("mnist_bnn", tiny_data, width=0.25)
    saved = save_deployed(convert(model), tmp_path / "m.bsd", {"dataset": tiny_data})
    payload = _payload(saved)
    manifest = _manifest(payload)
    manifest["ops"] = [op for op in manifest["ops"] if op["op"] != "MaxPoolInt"]
    crafted = _write(tmp_path / "crafted.bsd", payload, manifest)
    load_deployed(crafted)  # loads: each op is fine on its own
    assert main(["infer", str(crafted), "--test-subset", "1"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "cannot run on images of shape 1x28x28: op 'b3_conv'" in line, line
    assert not ops_run


# ---------------------------------------------------------------- the memory check


def test_a_program_too_large_for_the_machine_is_refused_before_any_op_runs(ops_run, monkeypatch):
    monkeypatch.delenv("BINSENSE_ALLOW_LARGE", raising=False)
    deployed = convert(_calibrated("compact_bnn", "cifar10", width=0.125, encoder="glt"))
    assert not ops_run  # (the trained model's ChannelShuffle is no op of the program)
    needed = deployed.memory_bytes((3, 32, 32), 250)
    with pytest.raises(ResourceError) as e:
        deployed.check_memory((3, 32, 32), 250, available=needed - 1, allow=None)
    text = _one_line(str(e.value))
    assert "on a batch of 250 images of shape 3x32x32 needs at least" in text
    assert "--allow-large" in text and "BINSENSE_ALLOW_LARGE=1" in text
    assert deployed.check_memory((3, 32, 32), 250, available=needed) == needed
    # a huge image: far beyond any machine, on the real measured memory
    with pytest.raises(ResourceError, match="needs at least .* TB"):
        deployed.check_memory((3, 30000, 30000), 250, workspace=False)
    assert not ops_run


def test_allow_large_and_the_environment_skip_the_refusal(ops_run, monkeypatch):
    deployed = convert(_calibrated("mnist_bnn", "mnist", width=0.25))
    monkeypatch.delenv("BINSENSE_ALLOW_LARGE", raising=False)
    with pytest.raises(ResourceError):
        deployed.check_memory((1, 28, 28), 10, available=10)
    assert deployed.check_memory((1, 28, 28), 10, available=10, allow=True) > 10
    monkeypatch.setenv("BINSENSE_ALLOW_LARGE", "1")
    assert deployed.check_memory((1, 28, 28), 10, available=10) > 10
    with pytest.raises(BinsenseError, match="op 'input'"):  # the geometry is checked anyway
        deployed.check_memory((2, 28, 28), 10, available=10)
    assert not ops_run


def test_export_walks_and_checks_without_running_an_op(
    tiny_machine, tmp_path, ops_run, monkeypatch
):
    from binsense.export import export_c
    from binsense.export.common import op_shapes

    deployed = convert(_calibrated("vgg_small", "cifar10", width=0.0625, groups=2))
    with pytest.raises(ResourceError, match="exporting the deployed RecipeModel for images"):
        op_shapes(deployed, (3, 32, 32))
    with pytest.raises(ResourceError, match="exporting"):
        export_c(deployed, tmp_path / "c", (3, 32, 32))
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    monkeypatch.setenv("BINSENSE_ALLOW_LARGE", "1")
    assert op_shapes(deployed, (3, 32, 32)) == deployed.activation_shapes((3, 32, 32))
    assert not ops_run


# ---------------------------------------------------------------- the command line


@pytest.fixture
def tiny_file(tiny_data, tmp_path):
    """A deployed file for the tiny data set (3 classes, 1x28x28), and its data set."""
    model = _calibrated("mnist_bnn", tiny_data, width=0.25)
    meta = {"dataset": tiny_data, "input_shape": [1, 28, 28]}
    return str(save_deployed(convert(model), tmp_path / "tiny.bsd", meta))


def test_cli_infer_refuses_a_program_too_large_in_one_line(
    tiny_machine, tiny_file, capsys, ops_run
):
    assert main(["infer", tiny_file, "--batch-size", "7"]) == 2
    err = capsys.readouterr().err
    line = _one_line(err)
    assert line.startswith("error: running ") and "tiny.bsd on a batch of 7 images" in line
    assert "of shape 1x28x28 needs at least" in line and "--allow-large" in line
    assert not ops_run


@pytest.mark.parametrize("where", ["before", "after"])
def test_cli_allow_large_runs_infer_anyway(tiny_machine, tiny_file, capsys, where):
    argv = ["infer", tiny_file, "--batch-size", "7"]
    argv = ["--allow-large", *argv] if where == "before" else [*argv, "--allow-large"]
    assert main(argv) == 0
    assert "accuracy" in capsys.readouterr().out


def test_cli_environment_allows_infer(tiny_machine, tiny_file, capsys, monkeypatch):
    monkeypatch.setenv("BINSENSE_ALLOW_LARGE", "1")
    assert main(["infer", tiny_file]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_cli_infer_batch_is_the_smaller_of_batch_size_and_the_data(tiny_file, capsys, monkeypatch):
    seen = []
    real = DeployedModel.check_memory

    def spy(self, shape, batch, **kwargs):
        seen.append((tuple(shape), batch))
        return real(self, shape, batch, **kwargs)

    monkeypatch.setattr(DeployedModel, "check_memory", spy)
    assert main(["infer", tiny_file, "--batch-size", "1000"]) == 0
    assert seen == [((1, 28, 28), 30)]  # the tiny test split: 3 classes x 10 images
    capsys.readouterr()


def test_cli_deploy_check_refuses_before_running(tiny_data, tmp_path, capsys, monkeypatch):
    """The model fits, its program's activations do not: refused before check_exact runs
    either; --allow-large runs the check."""
    from binsense.train import TrainConfig, train

    config = TrainConfig(dataset=tiny_data, model="mnist_bnn", epochs=1, batch_size=30,
                         model_options={"width": 0.25})  # fmt: skip
    train(config, tmp_path / "run")
    checkpoint = str(tmp_path / "run" / "checkpoint.pt")
    monkeypatch.delenv("BINSENSE_ALLOW_LARGE", raising=False)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device="cpu": 10**12)
    monkeypatch.setattr(DeployedModel, "memory_bytes", lambda self, shape, batch, **k: 10**15)
    ran = []
    import binsense.deploy as deploy_package

    real_check = deploy_package.check_exact
    monkeypatch.setattr(
        deploy_package, "check_exact", lambda *a, **k: ran.append(1) or real_check(*a, **k)
    )
    argv = ["deploy", "--checkpoint", checkpoint, "--check"]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert "on a batch of 30 images of shape 1x28x28 needs at least 1.0 PB" in line, line
    assert "--allow-large" in line and not ran
    assert main([*argv, "--allow-large"]) == 0
    assert "predictions differ on 0" in capsys.readouterr().out and ran


def test_calling_the_program_on_images_it_does_not_fit_is_one_line():
    """The library's own entry points walk each new image shape first: a wrong channel
    count is one line naming the op, not integers from a kernel that trusts its shapes
    (the C conv reads the channels it was built for)."""
    deployed = convert(_calibrated("vgg_small", "cifar10", width=0.0625, groups=2))
    x = torch.rand(2, 3, 32, 32)
    assert deployed(x).shape == (2, 10)
    wrong = torch.rand(2, 4, 32, 32)
    for entry in (deployed, deployed.run_ops, deployed.predict, lambda t: list(deployed.trace(t))):
        with pytest.raises(BinsenseError, match="cannot run on images of shape 4x32x32: op"):
            entry(wrong)
