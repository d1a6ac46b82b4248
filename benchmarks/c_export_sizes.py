r"""Issue 24, item 3: how close the C export's memory comes to the bits of the model.

For each model family (built untrained at full width from
:func:`binsense.models.build_model` and :func:`binsense.data.dataset_info`, its batch norms
as built: the sizes do not depend on the trained values), deployed with
:func:`binsense.deploy.convert` and sized by :func:`binsense.export.c.generate_c` (no file
written, nothing compiled), one row:

- **binary weights**: the ±1 weights of the binary layers, as bits and as bytes
  (bits / 8): the floor any storage of them can reach;
- **C binary-weight bytes**: the ``const`` arrays that hold those bits in ``model.h``
  (``CExportInfo.binary_weight_bytes``; for an exporter without that field, the integer
  ``L<k>_W`` arrays parsed from ``model.h``) and their ratio to the bit count (1.00 = no
  padding at all);
- **C const bytes**: every ``const`` array (binary weights, integer thresholds, encoder
  tables, the float first layer and head): ``MODEL_WEIGHT_BYTES``;
- **arena bytes**: the static activation arena (``MODEL_ACTIVATION_BYTES``, ``.bss``).

The block-pruned rows prune the compact BNN one-shot (:func:`binsense.compress.prune`,
``score = "weight"``, 32-channel units) and remove the pruned channels
(:func:`binsense.compress.prune.remove_pruned`), as a pruned checkpoint is deployed.

Usage::

    python benchmarks/c_export_sizes.py            # the table (Markdown)
    python benchmarks/c_export_sizes.py --width 0.25 --prune 0.5 0.75
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from binsense.compress.prune import prune, remove_pruned
from binsense.data import dataset_info
from binsense.deploy import convert
from binsense.export.c import generate_c
from binsense.models import build_model

#: (label, model, data set, options): the families of the C export.
FAMILIES: list[tuple[str, str, str, dict]] = [
    ("mnist_bnn", "mnist_bnn", "mnist", {}),
    ("vgg_small", "vgg_small", "cifar10", {}),
    ("cnv", "cnv", "cifar10", {}),
    # the S3 model's layout (GLT-8 gives the same sizes: 24 planes as well)
    ("compact_bnn nbc (grouped)", "compact_bnn", "cifar10", {"encoder": "nbc"}),
]


@dataclass
class Row:
    """One model's figures."""

    label: str
    bits: int
    c_binary: int
    c_const: int
    arena: int
    seconds: float

    def markdown(self) -> str:
        ratio = self.c_binary / max(1, -(-self.bits // 8))
        return (
            f"| {self.label} | {self.bits:,} ({-(-self.bits // 8):,} B) | {self.c_binary:,} B | "
            f"{ratio:.3f} | {self.c_const:,} B | {self.arena:,} B |"
        )


def binary_array_bytes(header: str) -> int:
    """The bytes of the integer ``L<k>_W`` arrays of ``model.h`` (the binary weights; the
    float first layer and float head also use ``_W``, but as ``float``)."""
    sizes = {"uint64_t": 8, "uint32_t": 4, "uint16_t": 2, "uint8_t": 1}
    total = 0
    for ctype, n in re.findall(r"static const (\w+) L\d+_W\[(\d+)\]", header):
        total += sizes.get(ctype, 0) * int(n)
    return total


def model_for(name: str, dataset: str, options: dict, width: float, fraction: float) -> nn.Module:
    """The untrained model, block-pruned and reduced when ``fraction`` > 0."""
    torch.manual_seed(0)
    model = build_model(name, dataset_info(dataset), width=width, **options).eval()
    if fraction > 0:
        prune(model, fraction, score="weight")
        model = remove_pruned(model).eval()
    return model


def measure(label: str, name: str, dataset: str, options: dict, width: float,
            fraction: float = 0.0) -> Row:  # fmt: skip
    """Build, deploy and size one model (module docstring)."""
    t0 = time.perf_counter()
    model = model_for(name, dataset, options, width, fraction)
    info_d = dataset_info(dataset)
    deployed = convert(model)
    files, info = generate_c(deployed, (info_d.in_channels, *info_d.image_size))
    c_binary = getattr(info, "binary_weight_bytes", None)
    if c_binary is None:  # an exporter from before issue 24
        c_binary = binary_array_bytes(files["model.h"])
    if fraction > 0:
        label = f"{label} pruned {fraction:g}"
    return Row(label, info.binary_weights, c_binary, info.weight_bytes, info.activation_bytes,
               time.perf_counter() - t0)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=1.0, help="model width (default 1)")
    parser.add_argument("--prune", type=float, nargs="*", default=[0.5, 0.75],
                        help="block-pruning fractions of the compact BNN rows")  # fmt: skip
    parser.add_argument("--only", help="only the rows whose label contains this text")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    for label, name, dataset, options in FAMILIES:
        fractions = [0.0] + (list(args.prune) if name == "compact_bnn" else [])
        for fraction in fractions:
            if args.only and args.only not in label:
                continue
            rows.append(measure(label, name, dataset, options, args.width, fraction))
            print(f"  {rows[-1].label}: {rows[-1].seconds:.1f} s", file=sys.stderr)
    print(f"width {args.width:g}, untrained, binsense.export.c.generate_c\n")
    print("| model | binary weights: bits (bytes) | C binary weights | ratio | C const, all | "
          "C arena |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
