"""The ``binsense`` command line: parses arguments and calls the library.

User mistakes raise :class:`binsense.errors.BinsenseError`; :func:`main` prints their
one-line message (``error: ...``) and exits with status 2 — no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from binsense.errors import BinsenseError
from binsense.study.cli import add_study_commands

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# TrainConfig fields that get a dedicated flag; everything else via --set KEY=VALUE.
_TRAIN_FLAGS = {
    "dataset": "data set name (see `binsense data list`)",
    "model": "model name (see `binsense models`)",
    "epochs": "training epochs",
    "batch_size": "images per batch",
    "optimizer": "adam or sgd",
    "lr": "(peak) learning rate",
    "schedule": "constant, cosine or onecycle",
    "weight_decay": "weight decay",
    "crop_padding": "random-crop padding in pixels (0: no crop)",
    "train_subset": "train on n images per class",
    "test_subset": "test on n images per class",
    "seed": "random seed",
    "threads": "torch CPU threads",
    "device": "cpu, cuda, cuda:1, ...",
}


def _parse_value(text: str) -> Any:
    """A TOML literal (``0.25``, ``true``, ``"x"``, ``[1, 2]``) or else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BinsenseError(f"{flag} expects KEY=VALUE, got {item!r}.")
        out[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return out


def validation_message(err: ValidationError, what: str) -> str:
    """One line from a pydantic error: the first problem, naming the field."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or what
    if first["type"] == "extra_forbidden":
        return f"{what}: unknown option {loc!r}."
    return f"{what}: {loc}: {first['msg']} (got {first.get('input')!r})."


def _train_config(args: argparse.Namespace):
    from binsense.train import TrainConfig

    fields: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        try:
            fields.update(tomllib.loads(path.read_text()))
        except FileNotFoundError:
            raise BinsenseError(f"config file {str(path)!r} does not exist.") from None
        except tomllib.TOMLDecodeError as e:
            raise BinsenseError(f"{path}: invalid TOML: {e}.") from None
    fields.update({k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None})
    if args.flip:
        fields["flip"] = True
    fields.update(_key_values(args.set, "--set"))
    options = dict(fields.get("model_options", {}))
    options.update(_key_values(args.model_option, "--model-option"))
    if args.width is not None:
        options["width"] = args.width
    fields["model_options"] = options
    try:
        return TrainConfig(**fields)
    except ValidationError as e:
        raise BinsenseError(validation_message(e, "training config")) from None


def cmd_train(args: argparse.Namespace) -> int:
    from binsense.data import dataset_info
    from binsense.models import check_model
    from binsense.train import train

    config = _train_config(args)
    check_model(config.model, dataset_info(config.dataset), **config.model_options)  # fail fast
    out = Path(args.out) if args.out else Path("runs") / f"{config.model}-{config.config_hash()}"
    t0 = time.perf_counter()
    result = train(config, out, data_dir=args.data_dir, resume=args.resume)
    wall = time.perf_counter() - t0
    last = result.metrics[-1] if result.metrics else {}
    print(
        f"run {out}: {len(result.metrics)}/{config.epochs} epochs, "
        f"test accuracy {last.get('test_acc', float('nan')):.2%}, wall {wall:.0f} s"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from binsense.data import DeviceLoader, load_dataset
    from binsense.evaluate import evaluate
    from binsense.train import load_model

    model, config = load_model(args.checkpoint)
    device = torch.device(args.device or "cpu")
    data = load_dataset(config.dataset, "test", data_dir=args.data_dir)
    if args.test_subset:
        data = data.subset(args.test_subset, seed=config.seed)
    loader = DeviceLoader(data, args.batch_size, shuffle=False, device=device)
    result = evaluate(model.to(device), loader)
    row = {"checkpoint": str(args.checkpoint), "dataset": config.dataset, "model": config.model}
    row.update(accuracy=result.accuracy, loss=result.loss, n=result.n)
    if args.json:
        print(json.dumps(row))
    else:
        print(
            f"{config.model} on {config.dataset} test ({result.n} images): "
            f"accuracy {result.accuracy:.2%}, loss {result.loss:.4f}"
        )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from binsense.models import describe_models

    rows = describe_models()
    print(f"{'name':<18} {'for':<9} {'params':>11}  description")
    for r in rows:
        print(f"{r['name']:<18} {r['dataset']:<9} {r['params']:>11,}  {r['description']}")
    print("\noptions (--model-option KEY=VALUE; --width sets width):")
    for options in sorted({tuple(r["options"]) for r in rows}):
        names = [r["name"] for r in rows if tuple(r["options"]) == options]
        print(f"  {', '.join(names)}: {', '.join(options)}")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from binsense.data import dataset_info, list_datasets, resolve_data_dir

    print(f"data dir: {resolve_data_dir(args.data_dir)}")
    print(f"{'name':<14} {'classes':>7}  {'shape':<10}")
    for name in list_datasets():
        info = dataset_info(name)
        shape = f"{info.in_channels}x{info.image_size[0]}x{info.image_size[1]}"
        print(f"{name:<14} {info.num_classes:>7}  {shape:<10}")
    print("also: imagefolder:PATH (PATH/train/<class>/*, PATH/test/<class>/*)")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from binsense.data import load_dataset

    for name in args.names:
        for split in ("train", "test"):
            t0 = time.perf_counter()
            d = load_dataset(name, split, data_dir=args.data_dir, download=args.download)
            dt = time.perf_counter() - t0
            print(
                f"{name:<12} {split:<5} {len(d):>6} images {tuple(d.images.shape[1:])} "
                f"{d.info.num_classes} classes  sha256 {d.fingerprint[:12]}  {dt:.2f} s"
            )
    return 0


def cmd_design_kernel(args: argparse.Namespace) -> int:
    from binsense.design_kernel import (
        REFERENCE_KERNEL,
        equivalent_kernels,
        kernel_text,
        load_gray_images,
        plot_design_demo,
        plot_kernel_scores,
        score_kernels,
    )

    if args.top < 0:
        raise BinsenseError(f"--top must be >= 0, got {args.top}.")
    gray = load_gray_images(args.dataset, args.images, args.data_dir)
    t0 = time.perf_counter()
    ranking = score_kernels(
        gray, size=args.size, conv_kernels=args.conv_kernels, seed=args.seed, progress=True
    )
    wall = time.perf_counter() - t0
    top = ranking.records(args.criterion, args.top)
    has_ref = tuple(ranking.kernels.shape[1:]) == (2, 2)
    refs = [ranking.record(k) for k in equivalent_kernels(REFERENCE_KERNEL)] if has_ref else []
    if args.json:
        row = {
            "dataset": args.dataset,
            "images": ranking.images,
            "conv_kernels": ranking.conv_kernels,
            "seed": args.seed,
            "size": args.size,
            "candidates": len(ranking),
            "criterion": args.criterion,
            "top": [r.as_dict() for r in top],
            "reference": [r.as_dict() for r in refs],
            "wall_s": wall,
        }
        print(json.dumps(row))
    else:
        print(
            f"{len(ranking)} kernels ({args.size}x{args.size}) on {ranking.images} {args.dataset} "
            f"test images x {ranking.conv_kernels} random binary convs (seed {args.seed}), "
            f"{wall:.1f} s; ranked by {args.criterion}"
        )
        print(f"{'rank':>5}  {'kernel':<22} {'tv':>8} {'psnr':>8} {'mse':>8}  ranks tv/psnr/mse")
        for r in top:
            rank = getattr(r, f"rank_{args.criterion}")
            print(
                f"{rank:>5}  {kernel_text(r.kernel):<22} {r.tv:>8.4f} {r.psnr:>8.3f} "
                f"{r.mse:>8.4f}  {r.rank_tv}/{r.rank_psnr}/{r.rank_mse}"
            )
        for i, r in enumerate(refs):
            what = "reference (paper)" if i == 0 else "  equivalent"
            print(
                f"{what:<18} {kernel_text(r.kernel):<22} rank tv {r.rank_tv}, "
                f"psnr {r.rank_psnr}, mse {r.rank_mse} of {len(ranking)}"
            )
    if args.plot:
        path = plot_kernel_scores(ranking, args.plot, REFERENCE_KERNEL if has_ref else None)
        print(f"wrote {path}", file=sys.stderr)
    if args.demo:
        path = plot_design_demo(gray[0], args.demo, REFERENCE_KERNEL, seed=args.seed)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binsense",
        description="Binary neural networks that survive real hardware.",
        epilog="Data: --data-dir or BINSENSE_DATA points at local data sets (offline use).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a model",
        description="Train a model; writes a "
        "run folder (config.json, metrics.jsonl, checkpoint.pt).",
    )
    p.add_argument("--config", help="TOML file of training options (flags override it)")
    for field, text in _TRAIN_FLAGS.items():
        p.add_argument(
            "--" + field.replace("_", "-"),
            dest=field,
            help=text,
            default=None,
            type=_parse_value if field not in ("dataset", "model") else str,
        )
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--width", type=float, help="model width multiplier")
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model builder option, e.g. first_layer=binary (repeatable)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other training option, e.g. label_smoothing=0.1",
    )
    p.add_argument("--out", help="run folder (default runs/<model>-<config hash>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--data-dir", help="data-set folder (default: $BINSENSE_DATA)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its test set")
    p.add_argument("--checkpoint", required=True, help="a run's checkpoint.pt")
    p.add_argument("--data-dir", help="data-set folder (default: $BINSENSE_DATA)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--test-subset", type=int, help="n test images per class")
    p.add_argument("--device", help="cpu (default), cuda, ...")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="list or check data sets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = dsub.add_parser("list", help="list the data sets binsense knows")
    q.add_argument("--data-dir")
    q.set_defaults(func=cmd_data_list)
    q = dsub.add_parser("check", help="load data sets (decoding and caching them)")
    q.add_argument("names", nargs="+", metavar="NAME")
    q.add_argument("--data-dir")
    q.add_argument(
        "--download", action="store_true", default=None, help="allow torchvision downloads"
    )
    q.set_defaults(func=cmd_data_check)

    p = sub.add_parser(
        "design-kernel",
        help="rank DeSign dither kernels on real images",
        description="Score every integer DeSign kernel (6^(m n) of them) by the binary-layer "
        "simulation of Monroy et al. 2024 (TV, PSNR, MSE) and print the best ones and the "
        "rank of the paper's [[1, 1], [3, 3]].",
    )
    p.add_argument("--dataset", default="cifar10", help="data set (test split; default cifar10)")
    p.add_argument("--data-dir", help="data-set folder (default: $BINSENSE_DATA)")
    p.add_argument("--images", type=int, default=200, help="first n test images (default 200)")
    p.add_argument("--size", type=int, default=2, help="kernel size m (m x m; default 2)")
    p.add_argument("--conv-kernels", type=int, default=8, help="random binary convs (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random binary convs")
    p.add_argument("--top", type=int, default=10, help="kernels to list (default 10)")
    p.add_argument("--criterion", choices=("tv", "psnr", "mse"), default="tv", help="rank by")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the sorted score curves")
    p.add_argument("--demo", metavar="PATH", help="write a PNG: image, feature map, sign, DeSign")
    p.set_defaults(func=cmd_design_kernel)

    add_study_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BinsenseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `binsense study results ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted; finished epochs/results are saved — rerun to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
