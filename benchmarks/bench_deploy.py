r"""The deploy engine's XNOR-popcount kernels against torch fp32, one thread.

Four pieces of issue 12's evidence:

- **Kernel**: one binary 3x3 conv layer (padding 1, stride 1) on packed input words, to
  int32 (border correction applied) and to packed output words (fused integer threshold,
  the next layer's input), against ``torch.nn.functional.conv2d`` in float32 at the same
  shape: 64->64 @ 32x32, 128->128 @ 16x16, 256->256 @ 8x8, 512->512 @ 4x4, batch 1 and 16.
  The time of the C conv splits into the packed im2col and the GEMM; both are timed alone
  (materialized im2col, then the GEMM on it), and so is packing the ±1 float input into
  words (outside the packed-in -> packed-out layer: between binary layers the fused
  output already is the next input).
- **Peer shape**: the GEMM M=256, K=4608 bits (72 words), N=512 against a float32
  ``torch.matmul`` of the same shape and, with ``--bnnlab-python`` (or
  ``$BNNLAB_PYTHON``), against bnn-lab 1.0.0's prepacked native GEMM on the same ±1
  operands, run from bnn-lab's own virtual environment (it pins ``torch<2.13``) by
  ``benchmarks/peer_bnnlab.py``, same thread count, its result checked exact; with
  ``--numba-python`` (or ``$NUMBA_PYTHON``), against a numba kernel (the ``ctpop``
  intrinsic, compiled for the host; ``benchmarks/peer_numba.py``, 1 thread): the
  measurement behind building a C extension rather than using numba.
- **Whole model**: the full-width VGG-small BNN (``build_model("vgg_small", ...)``, batch
  norm calibrated on random images) converted by :func:`binsense.deploy.convert`, against
  its float32 twin (``vgg_small_float``, same shapes) and against the BNN's own PyTorch
  simulation, batch 1 and 64; and the weight memory: the twin's float32 parameters
  against the deployed program's packed weights, integer thresholds
  (:math:`\lceil \log_2(K + 2) \rceil + 1` bits each, as :mod:`binsense.compress.summary`
  counts them) and float stages (32 bits per value).
- **Study grid**: the evaluation grid of the S0 study file, read from
  ``studies/s0_fpn_bn.toml`` (clean; BN at 16..2 bits; six FPN types x seven levels x BN
  at 32 and 4 bits over 5 sensor instances: 427 rows; ``--quick``: 2 instances, 175
  rows) on the S0 ``cpu`` preset's model (VGG-small width 0.25; trained 1 epoch on 2,000
  CIFAR-10 images here) and test set (500 CIFAR-10 images), evaluated by the study runner
  with ``[evaluation] engine = "pytorch"`` and ``"binsense"``: the summed evaluation time
  of the rows (conversions and the engine's first-batch check included) and whether the
  rows are identical. Needs CIFAR-10 (``$BINSENSE_DATA``).

Every kernel result is checked against the float result before it is timed; the deployed
whole model against the PyTorch BNN's logits. Times are medians over ``--repeats`` runs
(each run long enough to time: a few ms). Usage::

    python benchmarks/bench_deploy.py [--paths all] [--threads 1] [--repeats 7]
        [--sections kernel,peer,model,study] [--quick]

``--paths all`` times every kernel path this CPU runs (AVX-512 VPOPCNTDQ, AVX2, portable
C) instead of the best one alone. ``--quick``: 3 repeats.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from binsense.data import dataset_info
from binsense.deploy import convert, kernels
from binsense.deploy.bits import pack_bits
from binsense.deploy.ir import FloatStage, PackedConv, PackedLinear, Threshold
from binsense.layers import BinaryConv2d
from binsense.models import build_model

SHAPES = [(64, 32), (128, 16), (256, 8), (512, 4)]  # channels in = out, height = width
BATCHES = [1, 16]


def _time(fns: dict[str, Callable[[], object]], repeats: int, min_seconds: float = 0.004):
    """Median seconds per call of each function, **interleaved**: ``repeats`` rounds, each
    timing every function in turn over enough calls to fill ``min_seconds``. On a shared
    VM whose speed drifts by tens of percent from one second to the next, the functions
    compared are timed side by side, so a drift moves both sides of a ratio alike."""
    calls = {}
    for name, fn in fns.items():
        fn()
        start = time.perf_counter()
        fn()
        calls[name] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(ts) for name, ts in samples.items()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pm1(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def bench_conv(channels: int, size: int, batch: int, path: str, threads: int, repeats: int):
    torch.manual_seed(channels)
    conv = BinaryConv2d(channels, channels, 3, 1, 1)
    packed = PackedConv.of(conv)
    weight = conv.binary_weight().detach()
    x = _pm1(batch, channels, size, size, seed=size)
    y_float = F.conv2d(x, weight, None, 1, 1)

    words = kernels.pack_input(x)  # packed in: (B, H, W, words)
    weights = kernels.conv_weights(packed.weight_words, 1)
    dims = kernels.conv_dims(batch, size, size, 1, channels, channels, (3, 3), (1, 1), (1, 1))
    bias = (packed.border(size, size) - packed.fan_in).flatten(1).contiguous()
    g = torch.Generator().manual_seed(1)  # a threshold per channel, as after batch norm
    tau = torch.randint(-8, 9, (channels, 1), generator=g, dtype=torch.int32)
    flip = torch.where(torch.rand(channels, 1, generator=g) < 0.1, -1, 1).to(torch.int8)
    threshold = kernels.fuse_threshold(bias, tau, flip)

    def int32_out():
        return kernels.conv2d_words(words, weights, dims, bias, None, threads, path)

    def packed_out():
        return kernels.conv2d_words(words, weights, dims, None, threshold, threads, path)

    y_int = int32_out()
    if not torch.equal(y_int.float(), y_float):
        raise SystemExit(f"{path}: the conv {channels}@{size} b{batch} is not exact")
    bits = flip.view(1, -1, 1, 1) * (y_int - tau.view(1, -1, 1, 1)) >= 0
    if not torch.equal(packed_out(), pack_bits(bits.permute(0, 2, 3, 1), -1)):
        raise SystemExit(f"{path}: the fused conv {channels}@{size} b{batch} is not exact")

    a = kernels.im2col(words, dims)
    t = _time(
        {
            "torch": lambda: F.conv2d(x, weight, None, 1, 1),
            "int32": int32_out,
            "fused": packed_out,
            "im2col": lambda: kernels.im2col(words, dims),
            "gemm": lambda: kernels.gemm_packed(a, weights.panels, channels, threads, path),
            "pack": lambda: kernels.pack_input(x),
        },
        repeats,
    )
    return t


def bench_gemm(path: str, threads: int, repeats: int):
    m, n, kbits = 256, 512, 4608
    k = kbits // 64
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-(2**63), 2**63 - 1, (m, k), generator=g, dtype=torch.int64)
    b = torch.randint(-(2**63), 2**63 - 1, (n, k), generator=g, dtype=torch.int64)
    c = kernels.xnor_gemm(a, b, threads, path)
    # exact: the ±1 float product of the unpacked bits equals 2 C - K
    shifts = torch.arange(64, dtype=torch.int64)
    af = ((a.unsqueeze(-1) >> shifts) & 1).flatten(1).float() * 2 - 1
    bf = (((b.unsqueeze(-1) >> shifts) & 1).flatten(1).float() * 2 - 1).T.contiguous()
    if not torch.equal((2 * c - kbits).float(), af @ bf):
        raise SystemExit(f"{path}: the GEMM is not exact")
    panels = kernels.pack_b(b)
    t = _time(
        {
            "torch": lambda: af @ bf,
            "gemm": lambda: kernels.xnor_gemm(a, b, threads, path),
            "packed": lambda: kernels.gemm_packed(a, panels, n, threads, path),
        },
        repeats,
    )
    return {**t, "operands": (af, bf)}


def bench_peer(
    script: str, python: str, af: torch.Tensor, bf: torch.Tensor, threads: int, repeats: int
):
    """A peer's GEMM on the same ±1 operands, run by ``benchmarks/<script>`` with the
    peer's own interpreter ``python`` (bnn-lab: ``peer_bnnlab.py``, numba:
    ``peer_numba.py``); its result checked equal to the float product."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="peer_") as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, x=af.to(torch.int8).numpy(), w=bf.T.contiguous().to(torch.int8).numpy())
        cmd = [python, str(Path(__file__).with_name(script)), str(inp), str(out)]
        cmd += ["--threads", str(threads), "--repeats", str(repeats)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"{script} failed: {run.stderr.strip().splitlines()[-1:]}")
        data = np.load(out)
        y, info = torch.from_numpy(data["y"]), json.loads(str(data["info"]))
    info["exact"] = bool(torch.equal(y, af @ bf))
    return info


# ---------------------------------------------------------------- whole model


@torch.no_grad()
def calibrate(model: nn.Module, batches: int = 4, batch: int = 32, seed: int = 0) -> nn.Module:
    """Batch-norm running statistics from random images in [0, 1] (train-mode forwards,
    cumulative averages), then eval mode: realistic thresholds without training."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
    model.train()
    for _ in range(batches):
        model(torch.rand(batch, 3, 32, 32, generator=g))
    return model.eval()


def float_values(stage: FloatStage) -> int:
    """The float parameters of a float stage: the tensors its typed ops hold (a conv's
    weight and bias, a norm's statistics and affine parameters, an encoder's mean and
    std), not the affine form a norm records for the exports (derived from them)."""
    return sum(
        value.numel()
        for op in stage.ops
        for f in dataclasses.fields(op)
        if isinstance(value := getattr(op, f.name), torch.Tensor) and value.is_floating_point()
    )


def weight_memory(twin: nn.Module, deployed) -> dict[str, float]:
    """Bits of the twin's float32 parameters and of the deployed program's parts."""
    twin_bits = 32 * sum(p.numel() for p in twin.parameters())
    packed = thresholds = floats = 0
    fan_in = 0
    # forward order: a threshold follows its layer; a residual unit's packed convs,
    # threshold and float stages are visited after it (OpList.walk)
    for op in deployed.ops.walk():
        if isinstance(op, PackedConv | PackedLinear):
            packed += 64 * op.weight_words.numel()
            fan_in = op.fan_in
        elif isinstance(op, Threshold):
            thresholds += op.tau.numel() * (math.ceil(math.log2(fan_in + 2)) + 1)
        elif isinstance(op, FloatStage):
            floats += 32 * float_values(op)
    total = packed + thresholds + floats
    return {
        "twin": twin_bits,
        "packed": packed,
        "thresholds": thresholds,
        "floats": floats,
        "total": total,
    }


@torch.no_grad()
def op_profile(deployed, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per op kind (its class name) of one forward pass of ``deployed``."""
    samples: dict[str, list[float]] = {}
    for _ in range(max(repeats, 1) + 1):  # the first pass warms up, then is overwritten
        spent: dict[str, float] = {}
        h = x
        for op in deployed.ops:
            start = time.perf_counter()
            h = op(h)
            name = type(op).__name__
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
        for name, t in spent.items():
            samples.setdefault(name, []).append(t)
    return {name: statistics.median(ts[1:] or ts) for name, ts in samples.items()}


def bench_whole_model(threads: int, repeats: int) -> tuple[list[dict], dict[str, float]]:
    info = dataset_info("cifar10")
    torch.manual_seed(0)
    bnn = calibrate(build_model("vgg_small", info))
    twin = calibrate(build_model("vgg_small_float", info))
    deployed = convert(bnn)
    g = torch.Generator().manual_seed(1)
    rows = []
    with torch.no_grad():
        for batch in (1, 64):
            x = torch.rand(batch, 3, 32, 32, generator=g)
            if not torch.equal(bnn(x), deployed(x)):
                raise SystemExit(f"the deployed VGG-small's logits differ at batch {batch}")
            rows.append(
                {
                    "batch": batch,
                    **_time(
                        {
                            "twin": lambda x=x: twin(x),
                            "bnn_torch": lambda x=x: bnn(x),
                            "deployed": lambda x=x: deployed(x),
                        },
                        repeats,
                        min_seconds=0.05,  # warm caches: the twin's 54 MB evict the rest
                    ),
                    "ops": op_profile(deployed, x, repeats),
                }
            )
    return rows, weight_memory(twin, deployed)


# ---------------------------------------------------------------- study grid

STUDY_GRID = """\
[study]
name = "bench_engine"

[train]
dataset = "cifar10"
model = "vgg_small"
model_options = {{ width = 0.25 }}
epochs = 1
batch_size = 64
optimizer = "adam"
lr = 0.003
train_subset = 200
test_subset = 10
threads = {threads}

{conditions}
[evaluation]
test_subset = 50
batch_size = 250
engine = "{engine}"
{max_draws}
"""

#: The study whose evaluation grid is timed (its conditions, as written in its file).
S0_STUDY = Path(__file__).resolve().parent.parent / "studies" / "s0_fpn_bn.toml"


def _toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def s0_conditions() -> str:
    """The ``[[condition]]`` blocks of the S0 study file (clean, BN bits 16..2, six FPN
    types x seven levels x BN 32/4 bits over sensor instances), as TOML text."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    blocks = tomllib.loads(S0_STUDY.read_text())["condition"]
    return "".join(
        "[[condition]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in c.items()) + "\n"
        for c in blocks
    )


def _study_rows(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        cur = conn.execute(
            "SELECT condition_id, label, draw, accuracy, loss, n, seconds, versions FROM results "
            "ORDER BY condition_id, draw"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def bench_study_grid(threads: int, max_draws: int | None = None) -> dict:
    """The study runner on one trained model, once per engine (the second study folder
    gets a copy of the first one's trained run: nothing is trained twice)."""
    from binsense.study.runner import run_study
    from binsense.study.schema import condition_labels

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        root = Path(tmp)
        for engine in ("pytorch", "binsense"):
            folder = root / engine
            folder.mkdir()
            path = folder / "grid.toml"
            cap = f"max_draws = {max_draws}" if max_draws else ""
            text = STUDY_GRID.format(
                threads=threads, engine=engine, conditions=s0_conditions(), max_draws=cap
            )
            path.write_text(text)
            if engine == "binsense":
                shutil.copytree(root / "pytorch" / "grid" / "runs", folder / "grid" / "runs")
            start = time.perf_counter()
            result = run_study(path, out=folder / "grid", progress=False, log=lambda s: None)
            wall = time.perf_counter() - start
            if result.failed:
                raise SystemExit(f"the study grid failed: {result.failures[0].line()}")
            rows = _study_rows(result.study.store_path)
            order = [e.condition_id for e in result.study.evaluations]
            labels = condition_labels(result.study.evaluations)
            for r in rows:
                r["label"] = labels[r["condition_id"]]
            rows.sort(key=lambda r: (order.index(r["condition_id"]), r["draw"]))
            out[engine] = {"wall": wall, "rows": rows}
    return out


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", choices=["best", "all"], default="best")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--sections", default="kernel,peer,model,study", help="comma-separated: which tables"
    )
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument(
        "--bnnlab-python",
        default=os.environ.get("BNNLAB_PYTHON", ""),
        help="the python of a venv with bnn-lab 1.0.0 (the peer section); $BNNLAB_PYTHON",
    )
    parser.add_argument(
        "--numba-python",
        default=os.environ.get("NUMBA_PYTHON", ""),
        help="the python of a venv with numba (the peer section); $NUMBA_PYTHON",
    )
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    unknown = sections - {"kernel", "peer", "model", "study"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    if args.quick:
        args.repeats = 3
    torch.set_num_threads(args.threads)
    kernels.set_threads(args.threads)
    if kernels.library() is None:
        raise SystemExit("the XNOR C kernel could not be built here (a C compiler is needed)")
    paths = kernels.available()[:-1] if args.paths == "all" else [kernels.backend()]

    print(f"# bench_deploy  {datetime.date.today().isoformat()}")
    print(f"CPU: {_cpu_name()}; popcount ISA: {', '.join(kernels.cpu_features()) or 'none'}")
    print(f"kernel paths here: {', '.join(kernels.available())}; timed: {', '.join(paths)}")
    print(
        f"threads: {args.threads} (torch and kernel); torch {torch.__version__}; "
        f"OpenMP in the kernel: {kernels.openmp()}; median of {args.repeats}"
    )
    if "kernel" in sections:
        kernel_tables(paths, args)
    if "peer" in sections:
        peer_table(paths, args)
    if "model" in sections:
        model_tables(args)
    if "study" in sections:
        study_table(args)


def kernel_tables(paths: list[str], args: argparse.Namespace) -> None:
    print()
    print("## Kernel: binary 3x3 conv, packed in, vs torch fp32 conv2d (times in µs)")
    print()
    print(
        "| path | layer | batch | torch fp32 | int32 out | speed-up | packed out (fused) | "
        "speed-up | im2col alone | GEMM alone | pack ±1 float input |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    speedups: dict[str, list[float]] = {p: [] for p in paths}
    for path in paths:
        for channels, size in SHAPES:
            for batch in BATCHES:
                t = bench_conv(channels, size, batch, path, args.threads, args.repeats)
                speedups[path].append(t["torch"] / t["fused"])
                print(
                    f"| {path} | {channels}->{channels} @ {size}x{size} | {batch} | "
                    f"{_us(t['torch'])} | {_us(t['int32'])} | {t['torch'] / t['int32']:.1f}x | "
                    f"{_us(t['fused'])} | "
                    f"{t['torch'] / t['fused']:.1f}x | {_us(t['im2col'])} | {_us(t['gemm'])} | "
                    f"{_us(t['pack'])} |",
                    flush=True,
                )
    print()
    for path, s in speedups.items():
        print(f"{path}: median speed-up (fused) {statistics.median(s):.1f}x over {len(s)} layers")


def peer_table(paths: list[str], args: argparse.Namespace) -> None:
    print()
    print("## Peer shape: GEMM M=256, K=4608 bits, N=512 vs torch fp32 matmul (times in µs)")
    print()
    print("| path | torch fp32 matmul | xnor_gemm (packs B) | speed-up | B prepacked | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    results = {}
    for path in paths:
        t = results[path] = bench_gemm(path, args.threads, args.repeats)
        print(
            f"| {path} | {_us(t['torch'])} | {_us(t['gemm'])} | {t['torch'] / t['gemm']:.1f}x | "
            f"{_us(t['packed'])} | {t['torch'] / t['packed']:.1f}x |",
            flush=True,
        )
    t = results[paths[0]]
    if args.bnnlab_python:
        peer = bench_peer("peer_bnnlab.py", args.bnnlab_python, *t["operands"], args.threads,
                          args.repeats)  # fmt: skip
        print()
        print(
            f"bnn-lab {peer['bnn_lab']} (its venv: numpy {peer['numpy']}), kernel "
            f"{peer['kernel']}, {peer['threads']} thread(s), prepacked: "
            f"{_us(peer['seconds'])} µs ({t['torch'] / peer['seconds']:.1f}x torch fp32), "
            f"exact: {'yes' if peer['exact'] else 'NO'}; binsense {paths[0]} prepacked "
            f"{_us(t['packed'])} µs: **{peer['seconds'] / t['packed']:.2f}x bnn-lab's "
            f"throughput** (goal 1.3x)"
        )
    else:
        print("\nbnn-lab: not run (give --bnnlab-python or $BNNLAB_PYTHON: its own venv)")
    if args.numba_python:  # issue 12: numba or a C extension, chosen by measuring
        peer = bench_peer("peer_numba.py", args.numba_python, *t["operands"], 1, args.repeats)
        loops = ", ".join(f"{k} {_us(v)} µs" for k, v in peer["all"].items())
        print()
        print(
            f"numba {peer['numba']} (its venv: numpy {peer['numpy']}; compiled for "
            f"{peer['cpu']}: {', '.join(peer['features'])}), 1 thread, prepacked, ctpop "
            f"intrinsic: {loops}; exact: {'yes' if peer['exact'] else 'NO'}; binsense "
            f"{paths[0]} prepacked {_us(t['packed'])} µs: **{peer['seconds'] / t['packed']:.2f}x "
            f"numba's throughput**"
        )
    else:
        print("\nnumba: not run (give --numba-python or $NUMBA_PYTHON: its own venv)")


def model_tables(args: argparse.Namespace) -> None:
    rows, memory = bench_whole_model(args.threads, args.repeats)
    print()
    print(
        f"## Whole model: VGG-small BNN (full width) deployed vs its fp32 twin, "
        f"{args.threads} thread(s) (times in ms)"
    )
    print()
    print(
        "| batch | torch fp32 twin | BNN in PyTorch (simulation) | deployed program | "
        "speed-up vs twin | speed-up vs simulation |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['twin'] * 1e3:,.2f} | {r['bnn_torch'] * 1e3:,.2f} | "
            f"{r['deployed'] * 1e3:,.2f} | {r['twin'] / r['deployed']:.1f}x | "
            f"{r['bnn_torch'] / r['deployed']:.1f}x |"
        )
    print()
    for r in rows:
        parts = sorted(r["ops"].items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{name} {t * 1e3:,.1f}" for name, t in parts if t >= 5e-5)
        print(f"deployed program at batch {r['batch']}, ms per op kind: {shown}")
    print()
    kib = 8 * 1024
    print("| weight memory | KiB |")
    print("|---|---:|")
    print(f"| fp32 twin: parameters, 32 bits each | {memory['twin'] / kib:,.1f} |")
    print(f"| deployed: packed binary weights (64-bit words) | {memory['packed'] / kib:,.1f} |")
    print(f"| deployed: integer thresholds | {memory['thresholds'] / kib:,.1f} |")
    floats = memory["floats"] / kib
    print(f"| deployed: float stages (first conv, its norm, head norm) | {floats:,.1f} |")
    print(
        f"| deployed: total | {memory['total'] / kib:,.1f} "
        f"({memory['twin'] / memory['total']:.1f}x smaller) |"
    )


def study_table(args: argparse.Namespace) -> None:
    result = bench_study_grid(args.threads, 2 if args.quick else None)
    torch_rows, engine_rows = result["pytorch"]["rows"], result["binsense"]["rows"]
    same = [
        (a["condition_id"], a["draw"], a["accuracy"], a["loss"], a["n"])
        == (b["condition_id"], b["draw"], b["accuracy"], b["loss"], b["n"])
        for a, b in zip(torch_rows, engine_rows, strict=True)
    ]
    print()
    print(
        "## Study grid (S0's conditions): VGG-small width 0.25, 500 CIFAR-10 test images, "
        "batch 250, "
        f"{args.threads} thread(s) (evaluation seconds per row, conversions included)"
    )
    print()
    print("| conditions | rows | PyTorch s | binsense s | less time | engines | same rows |")
    print("|---|---:|---:|---:|---:|---|---|")
    groups: dict[str, list] = {}
    for a, b, ok in zip(torch_rows, engine_rows, same, strict=True):
        groups.setdefault(a["label"].split("(")[0].split(" ")[0], []).append((a, b, ok))
    for name, items in groups.items():
        ta = sum(a["seconds"] for a, _, _ in items)
        tb = sum(b["seconds"] for _, b, _ in items)
        engines = sorted({json.loads(b["versions"]).get("engine", "?") for _, b, _ in items})
        print(
            f"| {name} | {len(items)} | {ta:.2f} | {tb:.2f} | {ta / tb:.1f}x | "
            f"{', '.join(engines)} | {sum(ok for *_, ok in items)}/{len(items)} |"
        )
    t_torch = sum(r["seconds"] for r in torch_rows)
    t_engine = sum(r["seconds"] for r in engine_rows)
    print(
        f"| **all** | {len(same)} | **{t_torch:.2f}** | **{t_engine:.2f}** | "
        f"**{t_torch / t_engine:.1f}x** | | {sum(same)}/{len(same)} |"
    )
    print()
    print(
        f"run_study wall time: PyTorch {result['pytorch']['wall']:.1f} s (training included), "
        f"binsense {result['binsense']['wall']:.1f} s (loads the trained run)"
    )


if __name__ == "__main__":
    main()
