r"""Export a deployed BNN (:class:`~binsense.deploy.program.DeployedModel`) where users run it.

- :func:`export_onnx` (:mod:`binsense.export.onnx`): a standard ONNX graph (opset 18)
  that gives the PyTorch model's predictions in onnxruntime, binary weights stored as bits;
- :func:`export_qonnx` (:mod:`binsense.export.qonnx`): the QONNX flavour for FINN and
  hls4ml (``BipolarQuant`` binarisation, ``MultiThreshold`` folded thresholds and
  thermometer encoders);
- :func:`export_c` (:mod:`binsense.export.c`): dependency-free C99 (packed weights and
  integer thresholds as ``const`` arrays, XNOR-popcount layers, no heap).

``binsense export --checkpoint RUN/checkpoint.pt --onnx model.onnx`` (or ``--deployed
model.bsd``, ``--qonnx``, ``--c DIR``) is the command line. See ``docs/export.md``.
"""

from __future__ import annotations

from binsense.export.c import CExportInfo, export_c
from binsense.export.onnx import INSTALL_HINT, ExportInfo, export_onnx, require_onnx, run_onnx
from binsense.export.qonnx import export_qonnx, run_qonnx

__all__ = [
    "INSTALL_HINT",
    "CExportInfo",
    "ExportInfo",
    "export_c",
    "export_onnx",
    "export_qonnx",
    "require_onnx",
    "run_onnx",
    "run_qonnx",
]
