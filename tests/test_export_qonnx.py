"""QONNX flavour: BipolarQuant for every binarisation, MultiThreshold for the folded
thresholds and the thermometer encoder, in the QONNX domain; evaluated with the ops'
published semantics it gives the packed engine's logits; a non-threshold encoder (NBC)
is refused with one line. The ``qonnx`` package's own tools accept every family's graph:
``LowerConvsToMatMul`` (FINN's lowering) leaves no ``Conv`` and the same logits, and
``inference_cost`` counts the binary weights and MACs that ``binsense summary`` counts."""

from __future__ import annotations

import warnings
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_export_c import calibrated, real_images

from binsense.compress.summary import summary
from binsense.deploy import convert, ir, stage
from binsense.deploy.program import DeployedModel
from binsense.errors import BinsenseError

pytest.importorskip("onnx", reason='the export extra is not installed: pip install -e ".[export]"')
from binsense.export.qonnx import (  # noqa: E402
    QONNX_DOMAIN,
    build_qonnx,
    export_qonnx,
    multithreshold,
    run_qonnx,
    thermometer_thresholds,
)

#: The families the QONNX tests export: DeSign thresholds (float first layer), a binary
#: thermometer encoder with grouped convs and channel shuffles, grouped convs after a
#: float first layer.
FAMILIES = [
    ("mnist_bnn", "mnist", {"width": 0.25, "design": "2x2", "design_coupled": True}),
    ("compact_bnn", "cifar10", {"width": 0.125, "encoder": "uniform"}),
    ("vgg_small", "cifar10", {"width": 0.0625, "groups": 2}),
]


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


@pytest.mark.parametrize(("name", "dataset", "options"), FAMILIES)
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


def test_a_float_op_that_does_not_export_is_refused_with_one_line():
    """A typed float op without a handler (a residual unit's shortcut) is one line."""
    ops = (stage.ShortcutOp(1, 0, "slice"), stage.Flatten())
    deployed = DeployedModel(ir.OpList({"head": ir.FloatStage(tuple(ops))}))
    with pytest.raises(BinsenseError, match="a ShortcutOp op does not export to QONNX") as caught:
        build_qonnx(deployed, (3, 4, 4))
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- the qonnx package's tools


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda f: f"{f[0]}-{'-'.join(f[2])}")
def exported(request, tmp_path_factory) -> SimpleNamespace:
    """One family's QONNX file, its model, export info and the logits of 2 real images
    (``run_qonnx``: the engine's, checked above)."""
    name, dataset, options = request.param
    model = calibrated(name, dataset, **options)
    deployed = convert(model)
    images = real_images(dataset, 2)
    shape = tuple(images.shape[1:])
    path = tmp_path_factory.mktemp("qonnx") / f"{name}.onnx"
    info = export_qonnx(deployed, path, shape)
    x = images.float().div_(255.0).numpy()
    return SimpleNamespace(model=model, shape=shape, path=path, info=info, x=x,
                           logits=run_qonnx(path, x))  # fmt: skip


def _conv_weights(model) -> list[tuple[object, np.ndarray]]:
    """Every ``Conv`` node with its weight array (an initializer, or the float initializer
    that its ``BipolarQuant`` reads)."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    convs = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = node.input[1]
            if w not in inits and producer[w].op_type == "BipolarQuant":
                w = producer[w].input[0]
            convs.append((node, inits[w]))
    return convs


def test_every_conv_has_its_kernel_shape_and_a_group_qonnx_lowers(exported):
    import onnx

    convs = _conv_weights(onnx.load(exported.path))
    assert convs
    for node, w in convs:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["kernel_shape"] == list(w.shape[2:]), node.name
        group = attrs.get("group", 1)
        assert group == 1 or w.shape[:2] == (group, 1), node.name  # dense or depthwise


def test_qonnx_lowering_leaves_no_conv_and_the_same_logits(exported):
    pytest.importorskip("qonnx", reason='qonnx is not installed: pip install -e ".[dev]"')
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.fold_constants import FoldConstantsFiltered
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

    wrapper = ModelWrapper(str(exported.path)).transform(InferShapes())
    before = Counter(n.op_type for n in wrapper.graph.node)
    # FINN folds the BipolarQuant of each weight initializer before lowering (FoldQuantWeights)
    wrapper = wrapper.transform(FoldConstantsFiltered(lambda _, n: n.op_type == "BipolarQuant"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lowered = wrapper.transform(LowerConvsToMatMul())
    assert not [str(w.message) for w in caught if "skipping" in str(w.message)]
    after = Counter(n.op_type for n in lowered.graph.node)
    assert before["Conv"] > 0 and after["Conv"] == 0
    assert after["MatMul"] == before["MatMul"] + before["Conv"]
    got = np.concatenate([execute_onnx(lowered, {"image": x[None]})["logits"] for x in exported.x])
    assert np.array_equal(got.view(np.uint32), exported.logits.view(np.uint32))


def test_qonnx_inference_cost_counts_what_summary_counts(exported):
    pytest.importorskip("qonnx", reason='qonnx is not installed: pip install -e ".[dev]"')
    from qonnx.util.inference_cost import inference_cost

    cost = inference_cost(str(exported.path))["total_cost"]
    model = summary(exported.model, exported.shape)
    assert cost["mem_w_BIPOLAR"] == exported.info.binary_weights == model.params_1bit
    assert cost["op_mac_BIPOLAR_BIPOLAR"] == model.binary_macs  # XNOR-popcount MACs
    assert cost["total_macs"] == model.binary_macs + model.float_macs
