"""One count of binary weights: the ONNX, QONNX and C exports report what ``binsense
summary`` counts as 1-bit parameters (the weights of the binary layers), for a binary
encoder (its ±1 code table is no weight) and for binary weights on real pixels."""

from __future__ import annotations

import pytest
from test_export_c import calibrated

from binsense.compress.summary import summary
from binsense.data import dataset_info
from binsense.deploy import convert
from binsense.export.c import export_c

pytest.importorskip("onnx", reason='the export extra is not installed: pip install -e ".[export]"')
from binsense.export.onnx import export_onnx  # noqa: E402
from binsense.export.qonnx import export_qonnx  # noqa: E402


@pytest.mark.parametrize(
    ("name", "dataset", "options"),
    [
        ("compact_bnn", "cifar10", {"width": 0.125, "encoder": "uniform"}),  # code table
        ("mnist_bnn", "mnist", {"width": 0.25, "first_layer": "binary"}),  # ±1 W on pixels
    ],
)
def test_every_export_reports_the_binary_weights_summary_counts(name, dataset, options, tmp_path):
    model = calibrated(name, dataset, **options)
    deployed = convert(model)
    info = dataset_info(dataset)
    shape = (info.in_channels, *info.image_size)
    expected = summary(model, shape).params_1bit
    onnx_info = export_onnx(deployed, tmp_path / "m.onnx", shape)
    qonnx_info = export_qonnx(deployed, tmp_path / "m.qonnx.onnx", shape)
    c_info = export_c(deployed, tmp_path / "c", shape)
    counts = [onnx_info.binary_weights, qonnx_info.binary_weights, c_info.binary_weights]
    assert counts == [expected] * 3
    for export in (onnx_info, qonnx_info, c_info):
        assert f"{expected:,} binary weights" in export.line()
    planes = [op for op in deployed.ops if type(op).__name__ == "PlanesInput"]
    table = int(planes[0].table.numel()) if planes else 0  # C x 256 x K entries
    assert onnx_info.code_table_entries == table and qonnx_info.code_table_entries == 0
    assert (f"code table of {table:,} entries" in onnx_info.line()) == bool(table)
