"""QONNX flavour: BipolarQuant for every binarisation, MultiThreshold for the folded
thresholds and the thermometer encoder, in the QONNX domain; evaluated with the ops'
published semantics it gives the packed engine's logits; a non-threshold encoder (NBC)
is refused with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_export_c import calibrated, real_images

from binsense.deploy import convert
from binsense.errors import BinsenseError

pytest.importorskip("onnx", reason='the export extra is not installed: pip install -e ".[export]"')
from binsense.export.qonnx import (  # noqa: E402
    QONNX_DOMAIN,
    build_qonnx,
    multithreshold,
    run_qonnx,
    thermometer_thresholds,
)


def _ops(model) -> list[tuple[str, str]]:
    return [(n.domain, n.op_type) for n in model.graph.node]


def test_structure_of_a_float_first_layer_bnn():
    deployed = convert(calibrated("mnist_bnn", "mnist", width=0.25))
    model, builder = build_qonnx(deployed, (1, 28, 28))
    ops = _ops(model)
    assert (QONNX_DOMAIN, "BipolarQuant") in ops and (QONNX_DOMAIN, "MultiThreshold") in ops
    assert not any(op == "Sign" for _, op in ops)
    assert {o.domain for o in model.opset_import} == {"", QONNX_DOMAIN}
    # one MultiThreshold per folded threshold, one threshold per channel, bipolar out
    nodes = [n for n in model.graph.node if n.op_type == "MultiThreshold"]
    inits = {i.name: i for i in model.graph.initializer}
    thresholded = [op for op in deployed.ops if type(op).__name__ == "Threshold"]
    assert len(nodes) == len(thresholded)
    for node, th in zip(nodes, thresholded, strict=True):
        attrs = {a.name: a for a in node.attribute}
        assert attrs["out_dtype"].s == b"BIPOLAR"
        assert (attrs["out_scale"].f, attrs["out_bias"].f) == (2.0, -1.0)
        assert tuple(inits[node.input[1]].dims) == (th.tau.shape[0], 1)
    # every binary weight tensor goes through BipolarQuant
    quant_inputs = {n.input[0] for n in model.graph.node if n.op_type == "BipolarQuant"}
    packed = [op for op in deployed.ops if hasattr(op, "weight_words")]
    assert sum(name.endswith("_w_float") for name in quant_inputs) == len(packed) == 3


def test_thermometer_encoder_is_one_multithreshold_per_plane():
    deployed = convert(calibrated("compact_bnn", "cifar10", width=0.125, encoder="uniform"))
    table = deployed.ops[0].table.numpy()
    t, f = thermometer_thresholds(table)
    codes = np.arange(256)
    for ci in range(table.shape[0]):
        for k in range(table.shape[2]):
            i = ci * table.shape[2] + k
            assert np.array_equal(f[i] * codes >= f[i] * t[i], table[ci, :, k])
    model, _ = build_qonnx(deployed, (3, 32, 32))
    first = next(n for n in model.graph.node if n.op_type == "MultiThreshold")
    inits = {i.name: i for i in model.graph.initializer}
    assert first.output[0] == "planes"
    assert tuple(inits[first.input[1]].dims) == (table.shape[0] * table.shape[2], 1)


@pytest.mark.parametrize(
    ("name", "dataset", "options"),
    [
        ("mnist_bnn", "mnist", {"width": 0.25, "design": "2x2", "design_coupled": True}),
        ("compact_bnn", "cifar10", {"width": 0.125, "encoder": "uniform"}),
        ("vgg_small", "cifar10", {"width": 0.0625, "groups": 2}),
    ],
)
def test_published_semantics_give_the_engine_logits(name, dataset, options):
    deployed = convert(calibrated(name, dataset, **options))
    images = real_images(dataset, 6)
    x = images.float().div_(255.0)
    model, _ = build_qonnx(deployed, tuple(images.shape[1:]))
    got = run_qonnx(model, x.numpy())
    assert np.array_equal(got, deployed(x).numpy())


def test_multithreshold_counts_thresholds_reached():
    x = np.array([[[-1.0, 0.0, 2.5]], [[3.0, 1.0, -0.5]]], dtype=np.float32).reshape(2, 1, 3)
    t = np.array([[0.0, 1.0, 2.0]], dtype=np.float32)
    assert multithreshold(x, t, 2.0, -1.0).tolist() == [[[-1, 1, 5]], [[5, 3, -1]]]


def test_nbc_encoder_is_refused_with_one_line():
    deployed = convert(calibrated("mnist_bnn", "mnist", width=0.25, encoder="nbc"))
    with pytest.raises(BinsenseError, match="not thresholds"):
        build_qonnx(deployed, (1, 28, 28))
    assert torch.is_tensor(deployed.ops[0].table)
