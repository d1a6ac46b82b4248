"""C export: builds with ``cc -std=c99 -O2 -Wall -Wextra -Werror -pedantic`` and gives the
packed engine's logits bit for bit (so its predictions) on real images, for the MNIST BNN
and CIFAR-10 VGG-small-like BNNs (float first layer or binary encoder, DeSign thresholds,
grouped convs, channel shuffles, block-pruned compact models); portable and builtin
popcounts agree; memory figures are consistent; binary weights cost their bits (within
10 %); the arena is the largest input + output pair; single precision only; the
Cortex-M4 target builds with ``arm-none-eabi-gcc`` where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from test_deploy_program import _calibrated

from binsense.compress.prune import prune, remove_pruned
from binsense.data import load_dataset
from binsense.deploy import DeployedModel, convert
from binsense.deploy.ir import OpList, PackedConv, PackedLinear, PlanesInput, Threshold, ToInt8
from binsense.errors import BinsenseError
from binsense.export.c import (
    CORTEX_M4_CC,
    RUNTIME,
    STRICT_FLAGS,
    build_cortex_m4,
    compile_c,
    export_c,
    find_compiler,
    generate_c,
    run_c,
)
from binsense.export.common import op_shapes

calibrated = _calibrated  # a model with random BN parameters (negative gammas too)


def real_images(dataset: str, n: int = 32) -> torch.Tensor:
    """The first ``n`` test images (uint8) of a shared data set, or a skip."""
    folder = {"mnist": "MNIST", "cifar10": "cifar10-jpeg"}[dataset]
    if not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"real {dataset} data not found under {SHARED_DATA}")
    return load_dataset(dataset, "test", data_dir=SHARED_DATA, download=False).images[:n]


needs_cc = pytest.mark.skipif(find_compiler() is None, reason="no C compiler (cc, gcc, clang)")

#: the compact grouped BNN (4 groups of 4, 8 and 16 channels after a 24-plane encoder):
#: its groups start at bit offsets no word boundary meets
GROUPED = ("compact_bnn", "cifar10", {"width": 0.25, "encoder": "nbc"})
#: block-pruned to a quarter of its 16-channel units and reduced: groups of 4 and 8 channels
PRUNED = ("compact_bnn", "cifar10", {"width": 0.5, "encoder": "nbc", "prune": 0.75})


def model_for(name: str, dataset: str, options: dict) -> torch.nn.Module:
    """``calibrated(name, dataset, **options)``; with ``prune``: that fraction of every
    site's 16-channel units pruned (BN score) and removed, as a pruned checkpoint is."""
    options = dict(options)
    fraction = options.pop("prune", None)
    model = calibrated(name, dataset, **options)
    if fraction:
        prune(model, fraction, block_size=16)
        model = remove_pruned(model).eval()
    return model


FAMILIES = [
    ("mnist_bnn", "mnist", {"width": 0.25}),
    ("mnist_bnn", "mnist", {"width": 0.25, "design": "2x2", "design_coupled": True}),
    ("vgg_small", "cifar10", {"width": 0.0625, "groups": 2, "design": "2x2x4_shift"}),
    ("vgg_small", "cifar10", {"width": 0.0625, "head": "float", "norm": "channel_affine"}),
    ("compact_bnn", "cifar10", {"width": 0.125, "encoder": "uniform"}),
    ("mnist_bnn", "mnist", {"width": 0.25, "encoder": "nbc"}),
    GROUPED,
    PRUNED,
    ("compact_bnn", "cifar10", {"width": 0.125, "first_layer": "binary"}),  # ±1 float conv
]


@needs_cc
@pytest.mark.parametrize(("name", "dataset", "options"), FAMILIES)
def test_compiled_c_equals_the_engine_bit_for_bit(name, dataset, options, tmp_path):
    model = model_for(name, dataset, options)
    deployed = convert(model)
    images = real_images(dataset, 24)
    info = export_c(deployed, tmp_path, tuple(images.shape[1:]))
    assert info.float_mismatches == 0
    binary = compile_c(tmp_path)
    x = images.float().div_(255.0)
    ref = deployed(x).numpy()
    logits = run_c(binary, images.numpy(), logits=True)
    assert np.array_equal(logits.view(np.uint32), ref.view(np.uint32))
    preds = run_c(binary, images.numpy())
    assert np.array_equal(preds, model(x).argmax(1).numpy())  # = PyTorch


@needs_cc
def test_builtin_popcount_and_pedantic_build_agree(tmp_path):
    deployed = convert(calibrated("compact_bnn", "cifar10", width=0.125))
    images = real_images("cifar10", 8)
    export_c(deployed, tmp_path, (3, 32, 32))
    portable = compile_c(tmp_path, ["-Wextra", "-pedantic"], out="portable")
    builtin = compile_c(tmp_path, ["-DBINSENSE_BUILTIN_POPCOUNT"], out="builtin")
    a = run_c(portable, images.numpy(), logits=True)
    b = run_c(builtin, images.numpy(), logits=True)
    assert np.array_equal(a, b) and np.array_equal(a, deployed(images.float() / 255).numpy())


def arrays(header: str) -> dict[str, tuple[str, int]]:
    """The ``const`` arrays of ``model.h``: name -> (C type, element count)."""
    found = re.findall(r"static const (\w+) (\w+)\[(\d+)\]", header)
    return {name: (ctype, int(n)) for ctype, name, n in found}


SIZES = {"uint32_t": 4, "int32_t": 4, "float": 4, "int16_t": 2, "uint16_t": 2, "uint8_t": 1}


def arena_words(deployed, shape: tuple) -> int:
    """The largest input + output pair of the layers that store bits (the encoder's or
    float first layer's signs, each threshold's output), in 32-bit words: computed from
    the op shapes, not by the exporter."""
    shapes = op_shapes(deployed, shape)
    bits = [
        int(np.prod(s))
        for op, s in zip(deployed.ops, shapes, strict=True)
        if isinstance(op, PlanesInput | ToInt8 | Threshold)
    ]
    words = [-(-b // 32) for b in bits]
    return max([words[0]] + [a + b for a, b in zip(words, words[1:], strict=False)])


@pytest.mark.parametrize(
    ("name", "dataset", "options"),
    [("vgg_small", "cifar10", {"width": 0.0625, "groups": 2}), GROUPED],
)
def test_memory_figures_match_the_sources(name, dataset, options):
    deployed = convert(model_for(name, dataset, options))
    files, info = generate_c(deployed, (3, 32, 32))
    header = files["model.h"]
    arena = int(re.search(r"#define MODEL_ARENA_WORDS (\d+)", header).group(1))
    assert "static uint32_t arena[MODEL_ARENA_WORDS];" in files["model.c"]
    assert "malloc" not in files["model.c"]
    # the arena holds the largest input + output pair, not a fixed size
    assert arena == arena_words(deployed, (3, 32, 32))
    assert info.activation_bytes == 4 * arena
    assert f"#define MODEL_ACTIVATION_BYTES {4 * arena}" in header
    # every const array is counted once, and the binary weights are the L<k>_W bit streams
    found = arrays(header)
    assert info.weight_bytes == sum(SIZES[t] * n for t, n in found.values())
    assert f"#define MODEL_WEIGHT_BYTES {info.weight_bytes}" in header
    streams = [SIZES[t] * n for k, (t, n) in found.items() if re.fullmatch(r"L\d+_W", k)
               and t == "uint32_t"]  # fmt: skip
    assert info.binary_weight_bytes == sum(streams)
    assert f"#define MODEL_BINARY_WEIGHT_BYTES {info.binary_weight_bytes}" in header
    assert info.binary_weights == sum(
        int(np.prod(op.weight_pm1.shape)) if hasattr(op, "weight_pm1") else
        op.weight_words.shape[0] * op.fan_in
        for op in deployed.ops if hasattr(op, "weight_words")
    )  # fmt: skip


def test_unsupported_programs_are_refused_with_one_line():
    deployed = convert(calibrated("resnet18_bnn", "cifar10", width=0.0625))
    with pytest.raises(BinsenseError, match="residual"):
        generate_c(deployed, (3, 32, 32))


def test_norms_are_the_forms_the_program_records_never_probed_again(monkeypatch):
    """Every norm of the C export is the affine form :func:`binsense.deploy.stage.lower`
    recorded (``op.form``): exporting probes nothing, writes that form's ``a``, ``b`` and
    arithmetic, and reports its recorded mismatches."""
    import dataclasses

    from binsense.deploy import stage

    deployed = convert(calibrated("mnist_bnn", "mnist", width=0.25))
    named = dict(deployed.ops.named())
    head = named["head_norm"]
    (bn,) = head.ops
    assert isinstance(bn, stage.BatchNorm)
    for probe in ("norm_affine", "integer_probe", "float_probe"):
        monkeypatch.setattr(stage, probe, lambda *a, **k: pytest.fail("the export probed"))
    files, info = generate_c(deployed, (1, 28, 28))
    assert info.float_mismatches == 0
    # a recorded form with mismatches: counted, and its values written as they are
    form = dataclasses.replace(bn.form, a=bn.form.a * 2, mismatches=3)
    named["head_norm"] = dataclasses.replace(head, ops=(dataclasses.replace(bn, form=form),))
    deployed = DeployedModel(OpList(named), deployed.source)
    files, info = generate_c(deployed, (1, 28, 28))
    assert info.float_mismatches == 3
    k = re.search(r"bsn_head_lin\(&L(\d+)", files["model.c"]).group(1)
    written = re.search(rf"L{k}_A\[\d+\] = {{([^}}]*)}}", files["model.h"]).group(1)
    values = [float.fromhex(v.strip().rstrip("f")) for v in written.split(",")]
    assert np.array_equal(np.array(values, np.float32), form.a)
    assert f"L{k}_A, L{k}_B, {int(form.fused)}," in files["model.c"]


def test_a_float_op_c_does_not_compute_is_refused_in_one_line():
    """A float stage is read op by op (one handler per op type): an op outside the C
    layer's parts, or out of their order, is one line naming the stage's ops."""
    import dataclasses

    from binsense.deploy import stage

    deployed = convert(calibrated("mnist_bnn", "mnist", width=0.25))
    named = dict(deployed.ops.named())
    ops = named["input"].ops

    def with_input(float_ops) -> DeployedModel:
        stage_ = dataclasses.replace(named["input"], ops=float_ops)
        return DeployedModel(OpList({**named, "input": stage_}), deployed.source)

    conv_pool_norm_relu_sign = with_input((*ops[:-1], stage.ReLU(), ops[-1]))
    with pytest.raises(BinsenseError, match=r"op input: a float input stage of Standardize, "
                       r"Conv, MaxPool, BatchNorm, ReLU, Sign \(C takes \[encode\], conv, "
                       r"\[pool\], \[norm\], sign\) does not export to C\.$"):  # fmt: skip
        generate_c(conv_pool_norm_relu_sign, (1, 28, 28))
    norm_before_pool = with_input((ops[0], ops[1], ops[3], ops[2], ops[4]))
    with pytest.raises(BinsenseError, match="a float input stage of .*BatchNorm, MaxPool"):
        generate_c(norm_before_pool, (1, 28, 28))
    generate_c(with_input(ops), (1, 28, 28))


def test_channel_shuffles_are_the_layer_permutation():
    """The C layout follows :class:`~binsense.deploy.ir.Shuffle` as the trained
    :class:`~binsense.layers.ChannelShuffle` moves channels."""
    from binsense.export.c import _shuffle_permutation
    from binsense.layers.shape import ChannelShuffle, channel_shuffle

    for groups, channels in ((2, 8), (4, 24), (3, 9), (1, 5)):
        p = _shuffle_permutation("s", groups, channels)
        assert np.array_equal(p, ChannelShuffle(groups).channel_permutation(channels).numpy())
        x = torch.arange(channels).view(1, -1, 1, 1)
        assert np.array_equal(channel_shuffle(x, groups).view(-1).numpy()[p], np.arange(channels))
    with pytest.raises(BinsenseError, match="channel shuffle of 4 groups on 6 channels"):
        _shuffle_permutation("s", 4, 6)


@needs_cc
def test_a_broken_build_is_one_line(tmp_path):
    deployed = convert(calibrated("mnist_bnn", "mnist", width=0.25))
    export_c(deployed, tmp_path, (1, 28, 28))
    (tmp_path / "model.c").write_text("this is not C\n")
    with pytest.raises(BinsenseError, match="the C build failed"):
        compile_c(tmp_path)
    assert torch.__version__  # the environment is intact


# ---------------------------------------------------------------- as small as its bits


def stored_bits(deployed) -> int:
    """The ±1 weights of the deployed binary layers, counted from the ops."""
    return sum(
        op.weight_pm1.numel()
        if isinstance(op, PackedConv)
        else op.weight_words.shape[0] * op.fan_in
        for op in deployed.ops
        if isinstance(op, PackedConv | PackedLinear)
    )


@pytest.mark.parametrize(
    ("name", "dataset", "options"),
    [
        GROUPED,
        PRUNED,
        ("vgg_small", "cifar10", {"width": 0.125}),
        ("cnv", "cifar10", {"width": 0.125}),
        ("mnist_bnn", "mnist", {"width": 0.25}),
    ],
)
def test_binary_weights_cost_their_bits_within_ten_percent(name, dataset, options):
    deployed = convert(model_for(name, dataset, options))
    shape = (1, 28, 28) if dataset == "mnist" else (3, 32, 32)
    files, info = generate_c(deployed, shape)
    bits = stored_bits(deployed)
    streams = sum(4 * n for k, (t, n) in arrays(files["model.h"]).items()
                  if re.fullmatch(r"L\d+_W", k) and t == "uint32_t")  # fmt: skip
    assert streams == info.binary_weight_bytes
    assert bits / 8 <= info.binary_weight_bytes <= 1.10 * bits / 8
    # and the float first layer, thresholds and tables do not hide in another array
    layers = sum(isinstance(op, PackedConv | PackedLinear) for op in deployed.ops)
    assert info.binary_weight_bytes <= -(-bits // 8) + 4 * layers


@needs_cc
@pytest.mark.parametrize(
    ("name", "dataset", "options"),
    [
        ("vgg_small", "cifar10", {"width": 0.0625, "head": "float", "design": "2x2x4_shift"}),
        ("mnist_bnn", "mnist", {"width": 0.25}),
        GROUPED,
    ],
)
def test_model_c_is_single_precision(name, dataset, options, tmp_path):
    deployed = convert(model_for(name, dataset, options))
    shape = (1, 28, 28) if dataset == "mnist" else (3, 32, 32)
    export_c(deployed, tmp_path, shape)
    source = (tmp_path / "model.c").read_text() + (tmp_path / "model.h").read_text()
    assert "double" not in source
    # no implicit float -> double either (a float literal without f, a double libm call)
    cmd = [find_compiler(), "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic",
           "-Wdouble-promotion", "-c", "-o", str(tmp_path / "model.o"),
           str(tmp_path / "model.c")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_cortex_m4_target_writes_an_object_build_and_its_memory(tmp_path):
    deployed = convert(model_for(*GROUPED))
    info = export_c(deployed, tmp_path, (3, 32, 32), target="cortex-m4")
    assert sorted(info.files) == ["Makefile", "README.md", "model.c", "model.h"]  # no main.c
    make = (tmp_path / "Makefile").read_text()
    assert "CC = arm-none-eabi-gcc" in make
    assert "-mcpu=cortex-m4 -mthumb -mfpu=fpv4-sp-d16 -mfloat-abi=hard" in make
    assert "-c -o model.o model.c" in make and "main.c" not in make
    readme = (tmp_path / "README.md").read_text()
    flash = info.weight_bytes + info.code_bytes
    ram = info.activation_bytes + info.stack_bytes
    assert f"**{flash:,}**" in readme and f"**{ram:,}**" in readme
    assert f"| {info.activation_bytes:,} |" in readme and f"| {info.weight_bytes:,} |" in readme
    assert info.code_bytes > 1000 and info.stack_bytes >= 4 * 10
    for option in ("BINSENSE_BUILTIN_POPCOUNT", "BSN_POPCOUNT32", "BSN_FMA"):
        assert f"`{option}" in readme
    host = generate_c(deployed, (3, 32, 32))[0]
    assert "main.c" in host and "README.md" in host and "cc -std=c99" in host["README.md"]
    assert host["model.c"] == (tmp_path / "model.c").read_text()  # one model, two builds
    with pytest.raises(BinsenseError, match="unknown C target"):
        generate_c(deployed, (3, 32, 32), target="avr")


@pytest.mark.skipif(shutil.which(CORTEX_M4_CC) is None, reason="no arm-none-eabi-gcc")
@pytest.mark.parametrize(
    ("name", "dataset", "options"),
    [GROUPED, PRUNED, ("vgg_small", "cifar10", {"width": 0.0625, "head": "float"})],
)
def test_cortex_m4_object_builds_and_its_sections_match(name, dataset, options, tmp_path,
                                                        record_property):  # fmt: skip
    deployed = convert(model_for(name, dataset, options))
    info = export_c(deployed, tmp_path, (3, 32, 32), target="cortex-m4")
    sizes = build_cortex_m4(tmp_path)
    record_property("arm_size", sizes)
    print(f"{name} {options}: .text {sizes['text']:,} B, .data {sizes['data']:,} B, .bss "
          f"{sizes['bss']:,} B, stack frames {sizes['stack']:,} B (exporter: flash "
          f"{info.weight_bytes + info.code_bytes:,}, arena {info.activation_bytes:,}, stack "
          f"{info.stack_bytes:,})")  # fmt: skip
    assert sizes["bss"] == info.activation_bytes and sizes["data"] == 0
    assert info.weight_bytes < sizes["text"] <= info.weight_bytes + info.code_bytes
    assert 0 < sizes["stack"] <= info.stack_bytes
    undefined = subprocess.run(["arm-none-eabi-nm", "-u", str(tmp_path / "model.o")],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "__aeabi_d" not in undefined  # no soft-float double routine: single precision


def test_cli_exports_the_cortex_m4_target(tmp_path, capsys):
    from binsense.cli import main
    from binsense.deploy.fileformat import save_deployed

    deployed = convert(calibrated("mnist_bnn", "mnist", width=0.25))
    save_deployed(deployed, tmp_path / "m.bsd", meta={"dataset": "mnist"})
    out = tmp_path / "c"
    args = ["export", "--deployed", str(tmp_path / "m.bsd"), "--c", str(out)]
    assert main([*args, "--target", "cortex-m4"]) == 0
    assert "target cortex-m4" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["Makefile", "README.md", "model.c", "model.h"]
    assert "arm-none-eabi-gcc" in (out / "Makefile").read_text()
    assert main(["export", "--deployed", str(tmp_path / "m.bsd"), "--target", "cortex-m4",
                 "--onnx", str(tmp_path / "m.onnx")]) == 2  # fmt: skip
    assert "--target picks the flavour of --c DIR" in capsys.readouterr().err


@needs_cc
@pytest.mark.parametrize("defs", [[], ["-DBINSENSE_BUILTIN_POPCOUNT"]])
def test_the_c_runtime_file_compiles_whole_under_the_strict_flags(tmp_path, defs):
    """The runtime is a real C file: all of its chunks compile together (no model needs
    them all), under the flags of the generated Makefile; a chunk that does not build, or
    a stray line before the first chunk, fails here, not in a user's build."""
    source = tmp_path / "runtime_all.c"
    source.write_text("#include <math.h>\n#include <stddef.h>\n#include <stdint.h>\n" + RUNTIME)
    cmd = [find_compiler(), *STRICT_FLAGS, "-Wno-unused-function", *defs, "-fsyntax-only"]
    done = subprocess.run([*cmd, str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert RUNTIME.lstrip().startswith("/*") and "\n//@base\n" in RUNTIME


def test_an_export_from_a_file_takes_its_input_shape_as_infer_does(tmp_path):
    """``load_for_export`` asks the file what ``binsense infer`` asks it
    (:func:`~binsense.deploy.infer.file_input_shape`): its manifest's input shape first (an
    image-folder model), else its built-in data set's; neither is one clear line."""
    from binsense.deploy import save_deployed
    from binsense.export.source import load_for_export

    deployed = convert(calibrated("mnist_bnn", "mnist"))
    folder = {"dataset": "imagefolder:/data/digits", "input_shape": [1, 28, 28]}
    path = save_deployed(deployed, tmp_path / "folder.bsd", folder)
    _, shape, dataset = load_for_export(deployed_path=str(path))
    assert shape == (1, 28, 28) and dataset == "imagefolder:/data/digits"
    path = save_deployed(deployed, tmp_path / "mnist.bsd", {"dataset": "mnist"})
    assert load_for_export(deployed_path=str(path))[1:] == ((1, 28, 28), "mnist")
    path = save_deployed(deployed, tmp_path / "bare.bsd", {"dataset": "imagefolder:/x"})
    with pytest.raises(BinsenseError, match="names neither its input shape"):
        load_for_export(deployed_path=str(path))
