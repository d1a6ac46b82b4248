"""Exactness of the deploy engine on full test sets, one trained model per registry BNN
family (issue 12's first promise).

Each model is trained briefly (``--epochs`` on ``--train-subset`` images per class: real
weights and batch-norm statistics, not a good accuracy), converted by
:func:`binsense.deploy.convert`, and checked by :func:`binsense.deploy.check_exact` on
the **whole** test split: predictions and logits of the engine against the PyTorch model
in eval mode, every binary layer's integer output against the PyTorch layer's, and the
packed engine against the op list. The k-bit BN row quantizes a trained model's batch
norm to 4 bits (the S0 grid's ``raw`` target) before converting. Usage::

    BINSENSE_DATA=../shared/data python benchmarks/check_deploy_exact.py [--only NAME ...]
        [--out results.json]

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
    return {
        "case": name, "images": result.images,
        "prediction_mismatches": result.prediction_mismatches,
        "logit_mismatches": result.logit_mismatches,
        "layers": result.layers,
        "layers_exact": sum(1 for v in result.layer_mismatches.values() if v == 0),
        "engine_mismatches": result.engine_mismatches,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="these cases only")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=100, help="images per class")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--work", help="folder for the trained runs (kept, resumed)")
    parser.add_argument("--out", help="write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kernels.set_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="deploy_exact_"))
    print(f"kernel path {kernels.backend()}; torch {torch.__version__}; runs in {work}")
    print("| model | test images | predictions differ | logits differ | binary layers "
          "bit-exact | packed engine vs op list | seconds |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name in args.only or CASES:
        r = run_case(name, work, args)
        rows.append(r)
        print(
            f"| {name} | {r['images']:,} | {r['prediction_mismatches']} | "
            f"{r['logit_mismatches']} | {r['layers_exact']}/{r['layers']} | "
            f"{r['engine_mismatches']} | {r['seconds']:.0f} |",
            flush=True,
        )
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
