r"""Issue 13's evidence: ONNX and C exports of trained BNNs against PyTorch on a full test set.

For each ``--checkpoint`` (a trained binsense run), on its data set's whole test split:

- the PyTorch model's predictions (the reference, batches of ``--batch``), the packed
  engine's (:func:`binsense.deploy.convert`), the ONNX export's in onnxruntime and the
  compiled C export's (``cc -std=c99 -O2 -Wall -Werror``, portable popcount; with
  ``--builtin`` also ``-DBINSENSE_BUILTIN_POPCOUNT -mpopcnt``): images that disagree with
  PyTorch, and images whose logits differ bit for bit from the engine's;
- the ONNX file size against the bit count of its binary weights (and the float
  parameters it also holds);
- the C weight memory (every ``const`` array) and the static activation arena;
- images per CPU second of PyTorch, the packed engine, onnxruntime and the C binary, one
  thread each (CPU time, not wall time: the machine may be shared; the C binary's time
  includes reading the raw images and printing one line per image).

With ``--sizes``: the memory figures alone (no data, no training: they do not depend on
the weights' values) of the shipped studies' models: ONNX file size, C weight memory and
activation arena.

Usage::

    python benchmarks/bench_export.py --sizes
    BINSENSE_DATA=/work/shared/data python benchmarks/bench_export.py \
        --checkpoint runs/mnist/checkpoint.pt --checkpoint runs/vgg/checkpoint.pt \
        [--limit N] [--json out.json]

Times are one pass each (the checks run on every image, so a pass is long enough to time),
in CPU seconds of one thread; read them as scale, not as a tuned comparison.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from binsense.data import load_dataset
from binsense.deploy import convert
from binsense.export.c import compile_c, export_c, run_c
from binsense.export.onnx import export_onnx
from binsense.io import atomic_write_json
from binsense.train import load_model


def _batched(fn, x: torch.Tensor, batch: int) -> tuple[np.ndarray, float]:
    """``fn`` over ``x`` in batches: the concatenated outputs and the CPU seconds taken
    (this process, one thread: robust to a machine shared with other jobs)."""
    outs = []
    t0 = time.process_time()
    for i in range(0, x.shape[0], batch):
        outs.append(np.asarray(fn(x[i : i + batch])))
    return np.concatenate(outs), time.process_time() - t0


def _children_cpu() -> float:
    """CPU seconds used by finished child processes (the C binary)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench(checkpoint: str, limit: int | None, batch: int, work: Path, builtin: bool) -> dict:
    """Every figure of the module docstring for one checkpoint."""
    model, config = load_model(checkpoint)
    data = load_dataset(config.dataset, "test")
    images = data.images if limit is None else data.images[:limit]
    n = images.shape[0]
    x = images.float().div_(255.0)
    shape = tuple(images.shape[1:])
    deployed = convert(model)
    row: dict = {"checkpoint": checkpoint, "model": config.model, "dataset": config.dataset,
                 "images": n, "options": config.model_options}  # fmt: skip
    with torch.no_grad():
        ref, t_torch = _batched(lambda b: model(b).numpy(), x, batch)
    eng, t_engine = _batched(lambda b: deployed(b).numpy(), x, batch)
    pred = ref.argmax(1)
    row["accuracy"] = float((pred == data.labels[:n].numpy()).mean())
    row["engine_disagree"] = int((eng.argmax(1) != pred).sum())
    # ONNX: one onnxruntime session, one thread, timed over the batches
    import onnxruntime as ort

    onnx_path = work / f"{config.model}.onnx"
    info = export_onnx(deployed, onnx_path, shape)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    onnx_logits, t_onnx = _batched(
        lambda b: session.run(["logits"], {"image": b.numpy()})[0], x, batch
    )
    row.update(
        onnx_bytes=info.file_bytes, binary_weights=info.binary_weights,
        onnx_weight_bits_bytes=info.binary_weights // 8, onnx_float_params=info.float_params,
        onnx_disagree=int((onnx_logits.argmax(1) != pred).sum()),
        onnx_logits_differ=int((onnx_logits != eng).any(1).sum()),
    )  # fmt: skip
    # C
    cdir = work / f"{config.model}_c"
    cinfo = export_c(deployed, cdir, shape)
    row.update(c_weight_bytes=cinfo.weight_bytes, c_activation_bytes=cinfo.activation_bytes,
               c_input_bytes=cinfo.input_bytes)  # fmt: skip
    variants = [("c", [])]
    if builtin:
        variants.append(("c_builtin", ["-DBINSENSE_BUILTIN_POPCOUNT", "-mpopcnt"]))
    for name, flags in variants:
        binary = compile_c(cdir, flags, out=name)
        t0 = _children_cpu()
        logits = run_c(binary, images.numpy(), logits=True)
        seconds = _children_cpu() - t0
        row[f"{name}_disagree"] = int((logits.argmax(1) != pred).sum())
        row[f"{name}_logits_differ"] = int((logits != eng).any(1).sum())
        row[f"{name}_img_s"] = n / seconds
    row.update(torch_img_s=n / t_torch, engine_img_s=n / t_engine, onnx_img_s=n / t_onnx)
    return row


#: (label, model, dataset, options) of the shipped studies' models (studies/*.toml).
STUDY_MODELS = [
    ("S2 mnist_bnn DeSign-2D", "mnist_bnn", "mnist", {"design": "2x2"}),
    ("S0/S1 vgg_small", "vgg_small", "cifar10", {}),
    ("S0/S1 vgg_small w0.25", "vgg_small", "cifar10", {"width": 0.25}),
    ("S1 vgg_small no-BN", "vgg_small", "cifar10", {"norm": "channel_affine"}),
    ("S3 compact_bnn GLT-8 w2", "compact_bnn", "cifar10", {"encoder": "glt", "width": 2.0}),
    ("S3 compact_bnn GLT-8 w0.5", "compact_bnn", "cifar10", {"encoder": "glt", "width": 0.5}),
]


def sizes() -> str:
    """The memory figures of :data:`STUDY_MODELS` as a markdown table."""
    from binsense.data import dataset_info
    from binsense.export.c import generate_c
    from binsense.export.onnx import build_onnx
    from binsense.models import build_model

    lines = [
        "| model | binary weights | ONNX file | C weights (const) | C activation arena |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, name, dataset, options in STUDY_MODELS:
        info = dataset_info(dataset)
        model = build_model(name, info, **options).eval()
        deployed = convert(model)
        shape = (info.in_channels, *info.image_size)
        onnx_model, builder = build_onnx(deployed, shape)
        _, cinfo = generate_c(deployed, shape)
        lines.append(
            f"| {label} | {builder.binary_weights:,} ({builder.binary_weights / 8:,.0f} B) | "
            f"{len(onnx_model.SerializeToString()):,} B | {cinfo.weight_bytes:,} B | "
            f"{cinfo.activation_bytes:,} B |"
        )
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | test images | accuracy | engine / ONNX / C disagree with PyTorch | logits "
        "≠ engine (ONNX / C) | ONNX file vs weight bits | C weights / activations | "
        "images per CPU second: PyTorch, engine, onnxruntime, C (builtin popcount) |",
        "|---|---:|---:|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} {r['options']} | {r['images']:,} | {100 * r['accuracy']:.2f} % | "
            f"{r['engine_disagree']} / {r['onnx_disagree']} / {r['c_disagree']} | "
            f"{r['onnx_logits_differ']} / "
            f"{r['c_logits_differ']} | {r['onnx_bytes']:,} B vs {r['onnx_weight_bits_bytes']:,} "
            f"B ({r['binary_weights']:,} bits) + {r['onnx_float_params']:,} floats | "
            f"{r['c_weight_bytes']:,} B / {r['c_activation_bytes']:,} B | "
            f"{r['torch_img_s']:,.0f}, {r['engine_img_s']:,.0f}, {r['onnx_img_s']:,.0f}, "
            f"{r['c_img_s']:,.0f}"
            + (f" ({r['c_builtin_img_s']:,.0f})" if "c_builtin_img_s" in r else "")
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", default=[])
    parser.add_argument("--sizes", action="store_true", help="memory figures of study models")
    parser.add_argument("--limit", type=int, help="first N test images (default: all)")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--json", help="write the rows as JSON")
    parser.add_argument("--builtin", action="store_true", help="also time the C build with "
                        "-DBINSENSE_BUILTIN_POPCOUNT -mpopcnt")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.sizes:
        print(sizes())
    if not args.checkpoint:
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ckpt in args.checkpoint:
            rows.append(bench(ckpt, args.limit, args.batch, Path(tmp), args.builtin))
            print(json.dumps(rows[-1]), flush=True)
    print(f"{platform.node()} {platform.machine()} {platform.processor()} python "
          f"{sys.version.split()[0]} torch {torch.__version__}")  # fmt: skip
    print(markdown(rows))
    if args.json:
        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
