"""Exactness of the deploy engine on full test sets, one trained model per registry BNN
family (issue 12's first promise).

Each model is trained briefly (``--epochs`` on ``--train-subset`` images per class: real
weights and batch-norm statistics, not a good accuracy), converted by
:func:`binsense.deploy.convert`, and checked by :func:`binsense.deploy.check_exact` on
the **whole** test split: predictions and logits of the engine against the PyTorch model
in eval mode, every binary layer's integer output against the PyTorch layer's, and the
packed engine against the op list. The k-bit BN row quantizes a trained model's batch
norm to 4 bits (the S0 grid's ``raw`` target) before converting.

**One answer per image** (issue #24 item 1): the engine is also run over the whole test
split at each of ``--batches`` (default 1, 7 and 32) and its logits compared, bitwise,
with those at ``--batch-size``; the column counts the images whose logits differ at any
of them. ``--zoo NAME`` checks a shipped zoo model (a fully trained one) the same way.
Usage::

    BINSENSE_DATA=../shared/data python benchmarks/check_deploy_exact.py [--only NAME ...]
        [--zoo NAME ...] [--batches 1 7 32] [--out results.json]

Prints one Markdown row per model; ``--out`` keeps them as JSON. Runs are kept in
``--work`` (default a temporary folder) and resumed from there.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from binsense.data import DeviceLoader, load_dataset
from binsense.deploy import check_exact, convert, kernels
from binsense.layers import quantize_bn
from binsense.train import TrainConfig, load_model, train

#: name -> (dataset, model, model options, 4-bit BN after training)
CASES: dict[str, tuple[str, str, dict, bool]] = {
    "mnist_bnn": ("mnist", "mnist_bnn", {}, False),
    "mnist_bnn DeSign 2x2 coupled": (
        "mnist",
        "mnist_bnn",
        {"design": "2x2", "design_coupled": True},
        False,
    ),
    "mnist_bnn BN 4-bit": ("mnist", "mnist_bnn", {}, True),
    "mnist_bnn NBC input (fully binary)": ("mnist", "mnist_bnn", {"encoder": "nbc"}, False),
    "vgg_small": ("cifar10", "vgg_small", {}, False),
    "vgg_small width 0.25, DeSign 3-D": (
        "cifar10",
        "vgg_small",
        {"width": 0.25, "design": "2x2x4_shift"},
        False,
    ),
    "cnv float head": ("cifar10", "cnv", {"head": "float"}, False),
    "vgg_small groups 2, DeSign 3-D": (
        "cifar10",
        "vgg_small",
        {"groups": 2, "design": "2x2x4_shift"},
        False,
    ),
    "cnv BN-free (channel affine)": ("cifar10", "cnv", {"norm": "channel_affine"}, False),
    "resnet18_bnn width 0.5, DeSign": (
        "cifar10",
        "resnet18_bnn",
        {"width": 0.5, "design": "2x2x4_shift"},
        False,
    ),
    "compact_bnn GLT-8 (fully binary)": ("cifar10", "compact_bnn", {"encoder": "glt"}, False),
}


@torch.no_grad()
def batch_differences(deployed, data, base: int, batches: list[int]) -> int:
    """Images whose engine logits at any of ``batches`` differ (bitwise) from those at
    batch ``base``, over all of ``data``."""

    def logits(batch: int) -> torch.Tensor:
        loader = DeviceLoader(data, batch, shuffle=False, device="cpu")
        return torch.cat([deployed(x) for x, _ in loader])

    ref = logits(base)
    differ = torch.zeros(len(ref), dtype=torch.bool)
    for b in batches:
        differ |= (logits(b) != ref).any(1)
    return int(differ.sum())


def run_zoo(name: str, args: argparse.Namespace) -> dict:
    from binsense.deploy.fileformat import read_deployed

    loaded = read_deployed(f"zoo:{name}")
    data = load_dataset(loaded.meta["dataset"], "test")
    start = time.perf_counter()
    differ = batch_differences(loaded.model, data, args.batch_size, args.batches)
    return {"case": f"zoo:{name} (trained)", "images": len(data), "batch_mismatches": differ,
            "seconds": time.perf_counter() - start}  # fmt: skip


def run_case(name: str, work: Path, args: argparse.Namespace) -> dict:
    dataset, model_name, options, kbit = CASES[name]
    config = TrainConfig(
        dataset=dataset, model=model_name, model_options=options, epochs=args.epochs,
        batch_size=64, lr=0.003, train_subset=args.train_subset, test_subset=10, threads=1,
    )  # fmt: skip
    folder = work / config.config_hash()
    train(
        config,
        folder,
        resume=(folder / "checkpoint.pt").exists(),
        progress=False,
        log=lambda s: None,
    )  # fmt: skip (a finished run resumes to itself)
    model, _ = load_model(folder / "checkpoint.pt")
    model.eval()
    if kbit:
        quantize_bn(model, 4, "raw")
    data = load_dataset(dataset, "test")
    loader = DeviceLoader(data, args.batch_size, shuffle=False, device="cpu")
    start = time.perf_counter()
    deployed = convert(model)
    result = check_exact(model, loader, deployed)
    differ = batch_differences(deployed, data, args.batch_size, args.batches)
    return {
        "case": name, "images": result.images,
        "prediction_mismatches": result.prediction_mismatches,
        "logit_mismatches": result.logit_mismatches,
        "layers": result.layers,
        "layers_exact": sum(1 for v in result.layer_mismatches.values() if v == 0),
        "engine_mismatches": result.engine_mismatches,
        "batch_mismatches": differ,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="these cases only")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=100, help="images per class")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument(
        "--batches",
        type=int,
        nargs="*",
        default=[1, 7, 32],
        help="batch sizes whose engine logits must equal --batch-size's",
    )
    parser.add_argument("--zoo", nargs="*", default=[], help="zoo models to check too")
    parser.add_argument("--work", help="folder for the trained runs (kept, resumed)")
    parser.add_argument("--out", help="write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kernels.set_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="deploy_exact_"))
    print(f"kernel path {kernels.backend()}; torch {torch.__version__}; runs in {work}")
    batches = ", ".join(map(str, args.batches))
    print("| model | test images | predictions differ | logits differ | binary layers "
          f"bit-exact | packed engine vs op list | logits at batch {batches} vs "
          f"{args.batch_size} differ | seconds |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name in args.zoo:
        r = run_zoo(name, args)
        rows.append(r)
        print(f"| {r['case']} | {r['images']:,} | – | – | – | – | {r['batch_mismatches']} | "
              f"{r['seconds']:.0f} |", flush=True)  # fmt: skip
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    for name in args.only if args.only is not None else [] if args.zoo else CASES:
        r = run_case(name, work, args)
        rows.append(r)
        print(
            f"| {name} | {r['images']:,} | {r['prediction_mismatches']} | "
            f"{r['logit_mismatches']} | {r['layers_exact']}/{r['layers']} | "
            f"{r['engine_mismatches']} | {r['batch_mismatches']} | {r['seconds']:.0f} |",
            flush=True,
        )
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
