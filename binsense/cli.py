"""The ``binsense`` command line: parses arguments and calls the library.

User mistakes raise :class:`binsense.errors.BinsenseError`; :func:`main` prints their
one-line message (``error: ...``) and exits with status 2 — no traceback.

Before a command starts, *pre-flight checks* catch what would otherwise fail late or
obscurely: a device this machine does not have, an output path that is a file (or a
folder where a file is meant), a folder that cannot be written, an image folder with
empty files, symbolic-link loops or test images of another size than the training
images, a results store that is not binsense's, a ``.lock`` that is a folder, a model
that cannot fit in memory, or a deployed program whose activations cannot fit for the
images and batch size at hand. Each check is the library's, next to what it checks, so a
Python caller gets the same line: :mod:`binsense.io` (output paths),
:mod:`binsense.data` (data folders, image folders), :mod:`binsense.resources` (devices,
memory), :meth:`binsense.study.store.ResultStore.check_file`,
:mod:`binsense.study.preflight` (which ``run_study`` calls itself) and
:meth:`binsense.deploy.DeployedModel.check_memory`. ``--allow-large``, before or after
the command, skips the memory comparison in every check the command makes.

Everything else meets the safety net in :func:`main`: an :class:`OSError` becomes one
line saying what happened (disk full, permission denied, read-only file system, a
symbolic-link loop, ...) and any other exception one line naming its type; both exit
with status 1 and write the full traceback to ``last-error.log`` (in ``$BINSENSE_CACHE``,
else ``~/.cache/binsense/``). ``binsense --debug COMMAND ...`` (or ``BINSENSE_DEBUG=1``)
prints the traceback as well.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from binsense import tomlfile
from binsense.compress.summary import add_summary_command
from binsense.errors import BinsenseError, validation_message
from binsense.io import user_cache
from binsense.study.cli import add_study_commands

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
    "precision": "training step precision: auto (bf16 where native), bf16 or fp32",
}


def _key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BinsenseError(f"{flag} expects KEY=VALUE, got {item!r}.")
        out[key.strip().replace("-", "_")] = tomlfile.literal(value.strip())
    return out


def _read_config_file(path: Path) -> dict[str, Any]:
    """A TOML file of training options; every problem is one line naming the file."""
    try:
        return tomlfile.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BinsenseError(f"config file {str(path)!r} does not exist.") from None
    except UnicodeDecodeError as e:
        raise BinsenseError(
            f"config file {str(path)!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
            f"offset {e.start}); save it as UTF-8 (TOML files must be)."
        ) from None
    except OSError as e:
        raise BinsenseError(
            f"cannot read config file {str(path)!r}: {e.strerror or e}; check the path."
        ) from None
    except tomlfile.TOMLDecodeError as e:
        raise BinsenseError(f"{path}: invalid TOML: {e}.") from None


def _train_config(args: argparse.Namespace):
    from binsense.train import TrainConfig
    from binsense.train.config import CHECK_DEVICE

    fields: dict[str, Any] = {}
    if args.recipe:
        from binsense.train.recipes import get_recipe

        fields.update(get_recipe(args.recipe).config_fields())
    if args.config:
        fields.update(_read_config_file(Path(args.config)))
    fields.update({k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None})
    if args.flip:
        fields["flip"] = True
    for flag in ("compile", "channels_last"):
        if getattr(args, flag) is not None:
            fields[flag] = getattr(args, flag)
    fields.update(_key_values(args.set, "--set"))
    options = dict(fields.get("model_options", {}))
    options.update(_key_values(args.model_option, "--model-option"))
    if args.width is not None:
        options["width"] = args.width
    fields["model_options"] = options
    try:  # CHECK_DEVICE: the device must also exist on this machine
        return TrainConfig.model_validate(fields, context=CHECK_DEVICE)
    except ValidationError as e:
        raise BinsenseError(validation_message(e, "training config")) from None


# ---------------------------------------------------------------- pre-flight checks
# The checks themselves are the library's (see the module docstring); the handlers call
# them before the work starts.


#: Commands that check that a model fits in memory before building it: they take
#: ``--allow-large`` before or after the command name (:func:`build_parser`).
MEMORY_CHECKED_COMMANDS = (
    ("train",), ("eval",), ("study", "run"), ("summary",), ("deploy",), ("export",),
    ("tone-curves",),
)  # fmt: skip


def _allow_large(args: argparse.Namespace) -> bool | None:
    """``--allow-large`` given: True; else None (then $BINSENSE_ALLOW_LARGE decides)."""
    return True if getattr(args, "allow_large", False) else None


@contextlib.contextmanager
def _large_allowed_while(allow: bool) -> Iterator[None]:
    """With ``allow``: ``$BINSENSE_ALLOW_LARGE`` set to 1 while the command runs (the
    old value back afterwards), so that the flag reaches every memory check the command
    makes, also those deep in the library that take no ``allow`` argument (the study
    runner's trainings, a checkpoint loaded for distillation)."""
    from binsense.resources import ALLOW_LARGE_ENV

    if not allow:
        yield
        return
    old = os.environ.get(ALLOW_LARGE_ENV)
    os.environ[ALLOW_LARGE_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ALLOW_LARGE_ENV, None)
        else:
            os.environ[ALLOW_LARGE_ENV] = old


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise BinsenseError(f"{flag} must be at least 1, got {value}.")


def cmd_train(args: argparse.Namespace) -> int:
    from binsense.data import check_data_dir, check_image_folder, check_test_split, dataset_info
    from binsense.io import check_out_dir
    from binsense.resources import check_config_fits
    from binsense.train import train

    config = _train_config(args)
    out = Path(args.out) if args.out else Path("runs") / f"{config.model}-{config.config_hash()}"
    check_out_dir(out, "--out")
    check_data_dir(args.data_dir)
    check_image_folder(config.dataset)
    info = dataset_info(config.dataset)
    check_config_fits(config, info=info, training=True, allow=_allow_large(args))
    check_test_split(config.dataset, args.data_dir)
    t0 = time.perf_counter()
    result = train(
        config, out, data_dir=args.data_dir, resume=args.resume, allow_large=_allow_large(args)
    )
    wall = time.perf_counter() - t0
    last = result.metrics[-1] if result.metrics else {}
    print(
        f"run {out}: {len(result.metrics)}/{config.epochs} epochs, "
        f"test accuracy {last.get('test_acc', float('nan')):.2%}, wall {wall:.0f} s"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from binsense.data import (
        DeviceLoader,
        check_data_dir,
        check_image_folder,
        dataset_info,
        load_dataset,
    )
    from binsense.evaluate import evaluate
    from binsense.resources import check_config_fits, resolve_device
    from binsense.train import load_model
    from binsense.train.checkpoint import checkpoint_config, load_checkpoint

    _positive(args.batch_size, "--batch-size")
    _positive(args.test_subset, "--test-subset")
    device = resolve_device(args.device or "cpu", check_available=True)
    check_data_dir(args.data_dir)
    config = checkpoint_config(load_checkpoint(args.checkpoint), args.checkpoint)
    check_image_folder(config.dataset)
    info = dataset_info(config.dataset)
    check_config_fits(
        config, info=info, training=False, device=str(device), allow=_allow_large(args)
    )
    model, config = load_model(args.checkpoint, allow_large=_allow_large(args))
    data = load_dataset(config.dataset, "test", data_dir=args.data_dir)  # (shape checked)
    if args.test_subset is not None:
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


def _deployed_size_line(path: str | Path, size: int, checkpoint: str | None, model, config) -> str:
    """``FILE: N bytes (B bits); checkpoint: M bytes, Rx smaller; size summary: S bits``."""
    from binsense.compress.summary import summary
    from binsense.data import dataset_info

    line = f"{path}: {size:,} bytes ({8 * size:,} bits, {8 * size / 2**20:.3f} Mbit)"
    if checkpoint is not None:
        ck = Path(checkpoint).stat().st_size
        line += f"; checkpoint {Path(checkpoint).name}: {ck:,} bytes, {ck / size:.1f}x smaller"
    if model is not None:
        info = dataset_info(config.dataset)
        bits = summary(model, (info.in_channels, *info.image_size)).total_bits
        line += f"; the size summary counts {bits:,} bits (file {8 * size / bits:.2f}x)"
    return line


#: What a refusal of a program's activation memory advises first (``deploy``, ``infer``).
_SMALLER_BATCH = "give a smaller --batch-size"


def cmd_deploy(args: argparse.Namespace) -> int:
    from binsense.data import DeviceLoader, check_data_dir, dataset_info, load_dataset
    from binsense.deploy import check_exact, check_loader_memory, convert
    from binsense.deploy.fileformat import attach_layers, read_deployed, save_deployed
    from binsense.train import load_model

    _positive(args.batch_size, "--batch-size")
    _positive(args.test_subset, "--test-subset")
    if args.load is not None and args.out is not None:
        raise BinsenseError("give --out (write a file) or --load (read one), not both.")
    if args.load is None and args.checkpoint is None:
        raise BinsenseError("give --checkpoint RUN/checkpoint.pt (to convert) or --load FILE.")
    if args.check and args.checkpoint is None:
        raise BinsenseError("--check compares with the PyTorch model: give its --checkpoint.")
    check_data_dir(args.data_dir)
    loaded = read_deployed(args.load) if args.load is not None else None
    model = config = None
    if args.checkpoint is not None:
        model, config = load_model(args.checkpoint, allow_large=_allow_large(args))
    if loaded is not None:
        deployed = loaded.model
        ops = ", ".join(type(op).__name__ for op in deployed.ops)
        size = _deployed_size_line(args.load, loaded.size_bytes, args.checkpoint, model, config)
        print(f"loaded {size} — {ops}")
        if model is None:
            return 0
        attach_layers(deployed, model, repr(str(args.load)))
    else:
        t0 = time.perf_counter()
        deployed = convert(model)
        ops = ", ".join(type(op).__name__ for op in deployed.ops)
        print(f"{config.model}: converted in {time.perf_counter() - t0:.1f} s — {ops}")
        if args.out is not None:
            info = dataset_info(config.dataset)
            meta = {"model": config.model, "dataset": config.dataset,
                    "input_shape": [info.in_channels, *info.image_size],
                    "checkpoint": Path(args.checkpoint).name}  # fmt: skip
            path = save_deployed(deployed, args.out, meta)
            size = path.stat().st_size
            print(f"wrote {_deployed_size_line(path, size, args.checkpoint, model, config)}")
    if not args.check:
        return 0
    data = load_dataset(config.dataset, "test", data_dir=args.data_dir)
    if args.test_subset is not None:
        data = data.subset(args.test_subset, seed=config.seed)
    loader = DeviceLoader(data, args.batch_size, shuffle=False, device="cpu")
    check_loader_memory(  # before any op runs
        deployed, loader, what=args.load or config.model, allow=_allow_large(args),
        fix=_SMALLER_BATCH,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = check_exact(model, loader, deployed)
    wall = time.perf_counter() - t0
    what = "file" if loaded is not None else "engine"
    print(f"{what} vs PyTorch on {config.dataset} test, {result.line()} ({wall:.0f} s)")
    for name, count in result.layer_mismatches.items():
        if count:
            print(f"  {name}: integer output differs on {count} images")
    return 0 if result.exact else 1


def cmd_infer(args: argparse.Namespace) -> int:
    from binsense.data import DeviceLoader, check_data_dir, load_dataset
    from binsense.deploy import file_input_shape, infer, kernels
    from binsense.deploy.fileformat import read_deployed

    _positive(args.batch_size, "--batch-size")
    _positive(args.test_subset, "--test-subset")
    _positive(args.threads, "--threads")
    check_data_dir(args.data_dir)
    if args.predictions is not None and Path(args.predictions).is_dir():
        raise BinsenseError(f"--predictions {args.predictions!r} is a folder; give a file name.")
    loaded = read_deployed(args.model)
    name = args.data or loaded.meta.get("dataset")
    if not isinstance(name, str) or not name:
        raise BinsenseError(
            f"{args.model} does not name its data set: give --data NAME (or imagefolder:PATH)."
        )
    kernels.set_threads(args.threads)
    data = load_dataset(name, args.split, data_dir=args.data_dir)
    if args.test_subset is not None:
        data = data.subset(args.test_subset, seed=0)
    result = infer(
        loaded.model, DeviceLoader(data, args.batch_size, shuffle=False, device="cpu"),
        what=args.model, data_name=name, input_shape=file_input_shape(loaded.meta),
        allow_large=_allow_large(args), fix=_SMALLER_BATCH,
        progress=sys.stderr.isatty(),
    )  # fmt: skip
    n, wall = result.n, result.wall_s
    print(
        f"{args.model} on {name} {args.split} ({n:,} images): accuracy {result.accuracy:.2%}; "
        f"{n / wall:,.0f} images/s ({wall:.2f} s, kernel path {result.kernel_path}, "
        f"{result.threads} thread(s))"
    )
    if args.predictions is not None:
        result.write_predictions(args.predictions)
        print(f"wrote {args.predictions} ({n:,} rows)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from binsense.export import export_c, export_onnx, export_qonnx, require_onnx
    from binsense.export.source import load_for_export

    if (args.onnx is None) == (args.c is None):
        raise BinsenseError("give --onnx FILE (standard or --qonnx) or --c DIR (one of them).")
    if args.qonnx and args.onnx is None:
        raise BinsenseError("--qonnx is a flavour of --onnx FILE: give --onnx too.")
    if args.target is not None and args.c is None:
        raise BinsenseError("--target picks the flavour of --c DIR: give --c too.")
    if args.onnx is not None:
        require_onnx()  # before any work: one line on how to install the extra
    deployed, shape, dataset = load_for_export(args.checkpoint, args.deployed, _allow_large(args))
    where = " ".join(filter(None, (dataset, "images", "x".join(map(str, shape)))))
    if args.onnx is not None:
        export = export_qonnx if args.qonnx else export_onnx
        info = export(deployed, args.onnx, shape)
        print(f"{'QONNX' if args.qonnx else 'ONNX'} for {where}: {info.line()}")
        if info.float_mismatches:
            print(f"  warning: float layers differ from PyTorch on {info.float_mismatches} probes")
    else:
        cinfo = export_c(deployed, args.c, shape, target=args.target or "host")
        print(f"C for {where}: {cinfo.line()}")
        if cinfo.float_mismatches:
            print(f"  warning: float layers differ from PyTorch on {cinfo.float_mismatches} probes")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from binsense.models import component_choices, describe_models

    rows = describe_models()
    print(f"{'name':<18} {'for':<9} {'params':>11}  description")
    for r in rows:
        print(f"{r['name']:<18} {r['dataset']:<9} {r['params']:>11,}  {r['description']}")
    print("\noptions (--model-option KEY=VALUE; --width sets width):")
    for options in sorted({tuple(r["options"]) for r in rows}):
        names = [r["name"] for r in rows if tuple(r["options"]) == options]
        print(f"  {', '.join(names)}: {', '.join(options)}")
    print("\ncomponents by name (a name, or a table {name = ..., <options>}):")
    for kind, names in component_choices().items():
        print(f"  {kind}: {', '.join(names)}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from binsense.train.recipes import RECIPES

    for name, recipe in RECIPES.items():
        f = recipe.fields
        print(f"{name}\n  {recipe.description}")
        print(f"  goal: {recipe.goal}\n  measured: {recipe.expected()}")
        if args.verbose:
            print("  fields: " + tomlfile.key_values(f))
    print("\nbinsense train --recipe NAME [--out DIR] [flags that override the recipe]")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from binsense.zoo import zoo_entries

    entries = zoo_entries()
    if not entries:
        print("the zoo is empty")
        return 0
    print(f"{'name':<24} {'data':<8} {'acc':>7}  {'file':>9}  weights      recipe")
    for entry in entries:
        print(entry.line())
        if args.verbose:
            print("  " + json.dumps(entry.card, indent=2).replace("\n", "\n  "))
    print("\nbinsense infer zoo:NAME [--data NAME]; binsense export --deployed zoo:NAME ...")
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
    from binsense.data import check_data_dir, check_image_folder, load_dataset

    check_data_dir(args.data_dir)
    for name in args.names:
        check_image_folder(name)
        for split in ("train", "test"):
            t0 = time.perf_counter()  # (load_dataset checks an image folder's test shape)
            d = load_dataset(name, split, data_dir=args.data_dir, download=args.download)
            dt = time.perf_counter() - t0
            print(
                f"{name:<12} {split:<5} {len(d):>6} images {tuple(d.images.shape[1:])} "
                f"{d.info.num_classes} classes  sha256 {d.fingerprint[:12]}  {dt:.2f} s"
            )
    return 0


def cmd_tone_curves(args: argparse.Namespace) -> int:
    from binsense.data import dataset_info
    from binsense.encoders import build_encoder
    from binsense.encoders.plot import plot_tone_curves
    from binsense.train import load_model

    if Path(args.out).is_dir():
        raise BinsenseError(f"-o {args.out!r} is a folder; give a .png file name.")
    if args.uniform is not None and not 1 <= args.uniform <= 255:
        raise BinsenseError(f"--uniform takes 1 to 255 levels, got {args.uniform}.")
    encoders, info = {}, None
    for i, path in enumerate(args.checkpoint):
        model, config = load_model(path, allow_large=_allow_large(args))
        enc = getattr(model, "encoder", None)
        if enc is None or not hasattr(enc, "tone_curve"):
            raise BinsenseError(
                f"{path}: its model's input encoder ({type(enc).__name__}) has no tone curve; "
                "give checkpoints of models with a thermometer encoder (uniform, quantile, glt)."
            )
        spec = config.model_options.get("encoder")
        name = spec.get("name") if isinstance(spec, dict) else spec
        label = args.label[i] if i < len(args.label) else f"{name}-{enc.planes}"
        encoders[str(label) + ("" if label not in encoders else f" #{i}")] = enc
        info = info or dataset_info(config.dataset)
    if args.uniform is not None:
        encoders[f"uniform-{args.uniform}"] = build_encoder(
            {"name": "uniform", "levels": args.uniform}, info
        )
    out = plot_tone_curves(encoders, args.out)
    print(f"wrote {out}: tone curves of {', '.join(encoders)}")
    for label, enc in encoders.items():
        curve = enc.tone_curve()
        print(f"  {label}: planes set at codes 0/64/128/192/255 -> "
              f"{[curve[:, c].tolist() for c in (0, 64, 128, 192, 255)]}")  # fmt: skip
    return 0


def cmd_design_kernel(args: argparse.Namespace) -> int:
    from binsense.data import check_data_dir
    from binsense.io import check_output_file
    from binsense.layers.design_search import (
        REFERENCE_KERNEL,
        equivalent_kernels,
        kernel_text,
        load_gray_images,
        named_kernel,
        plot_design_demo,
        plot_kernel_scores,
        score_kernels,
    )

    if args.top < 0:
        raise BinsenseError(f"--top must be >= 0, got {args.top}.")
    _positive(args.images, "--images")
    _positive(args.conv_kernels, "--conv-kernels")
    for flag, path in (("--plot", args.plot), ("--demo", args.demo)):
        if path:
            check_output_file(Path(path), flag)
    named = {name: named_kernel(name, args.size) for name in args.kernel or ()}
    check_data_dir(args.data_dir)
    gray = load_gray_images(args.dataset, args.images, args.data_dir)
    t0 = time.perf_counter()
    ranking = score_kernels(
        gray, size=args.size, conv_kernels=args.conv_kernels, seed=args.seed, progress=True
    )
    wall = time.perf_counter() - t0
    top = ranking.records(args.criterion, args.top)
    has_ref = tuple(ranking.kernels.shape[1:]) == (2, 2)
    refs = [ranking.record(k) for k in equivalent_kernels(REFERENCE_KERNEL)] if has_ref else []
    chosen = {name: ranking.record(k) for name, k in named.items()}
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
            "named": {name: r.as_dict() for name, r in chosen.items()},
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
        for name, r in chosen.items():
            print(
                f"{name:<18} {kernel_text(r.kernel):<22} rank tv {r.rank_tv}, psnr "
                f"{r.rank_psnr}, mse {r.rank_mse} of {len(ranking)} (tv {r.tv:.4f}, psnr "
                f"{r.psnr:.3f}, mse {r.mse:.4f})"
            )
    if args.plot:
        path = plot_kernel_scores(ranking, args.plot, REFERENCE_KERNEL if has_ref else None)
        print(f"wrote {path}", file=sys.stderr)
    if args.demo:
        path = plot_design_demo(gray[0], args.demo, REFERENCE_KERNEL, seed=args.seed)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _read_summary_checkpoint(path: str, allow_large: bool | None) -> tuple[Any, Any]:
    """``binsense summary --checkpoint``'s reader: the model and config of a trained run
    (binsense.compress, where the command lives, never imports binsense.train)."""
    from binsense.train import load_model

    return load_model(path, allow_large=allow_large)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binsense",
        description="Binary neural networks that survive real hardware.",
        epilog="Data: --data-dir or BINSENSE_DATA points at local data sets (offline use).",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an unexpected error, print the full traceback (also: BINSENSE_DEBUG=1)",
    )
    parser.add_argument(
        "--allow-large",
        action="store_true",
        help="skip the memory check of train, eval, study run, summary, deploy, infer, export "
        "and tone-curves (also after the command; or BINSENSE_ALLOW_LARGE=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a model",
        description="Train a model; writes a "
        "run folder (config.json, metrics.jsonl, checkpoint.pt).",
    )
    p.add_argument(
        "--recipe", help="a named training recipe (`binsense recipes`); flags override it"
    )
    p.add_argument("--config", help="TOML file of training options (flags override it)")
    for field, text in _TRAIN_FLAGS.items():
        p.add_argument(
            "--" + field.replace("_", "-"),
            dest=field,
            help=text,
            default=None,
            type=tomlfile.literal if field not in ("dataset", "model") else str,
        )
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="compile the model for training (torch.compile; eager if it cannot)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="train conv models in the NHWC memory layout",
    )
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

    p = sub.add_parser(
        "deploy",
        help="convert a checkpoint to the integer program (bit-packed binary layers)",
        description="Convert a trained BNN into an integer program: integer thresholds, "
        "64-bit packed weights, exact padding. --out writes it to a file (packed bits, a "
        "JSON manifest; loads without running code); --load reads such a file instead. "
        "--check runs the program against the PyTorch model on the test set and counts "
        "disagreements (exit 1 if any).",
    )
    p.add_argument("--checkpoint", help="a run's checkpoint.pt (needed unless --load)")
    p.add_argument("--out", metavar="FILE", help="write the deployed model (e.g. model.bsd)")
    p.add_argument("--load", metavar="FILE", help="read a deployed model written by --out")
    p.add_argument("--check", action="store_true", help="compare with PyTorch on the test set")
    p.add_argument("--data-dir", help="data-set folder (default: $BINSENSE_DATA)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--test-subset", type=int, help="n test images per class (default: all)")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser(
        "infer",
        help="run a deployed model file on a data set (the packed engine)",
        description="Run a file written by `binsense deploy --out` on a data set's images "
        "with the packed XNOR-popcount engine: accuracy and images/s; --predictions writes "
        "one CSV row per image. Loading the file runs no code from it.",
    )
    p.add_argument("model", metavar="FILE", help="a deployed model (binsense deploy --out)")
    p.add_argument(
        "--data", help="data set name or imagefolder:PATH (default: the one the file names)"
    )
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--data-dir", help="data-set folder (default: $BINSENSE_DATA)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--test-subset", type=int, help="n images per class (default: all)")
    p.add_argument("--threads", type=int, default=1, help="kernel threads (default 1)")
    p.add_argument("--predictions", metavar="CSV", help="write index,label,prediction rows")
    p.add_argument(  # SUPPRESS: keeps the flag given before the command
        "--allow-large",
        action="store_true",
        default=argparse.SUPPRESS,
        help="run even if the program's activations for a batch exceed the available memory",
    )
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser(
        "export",
        help="export a deployed BNN to ONNX, QONNX or dependency-free C",
        description="Export the integer program of a checkpoint (or of a file written by "
        "`binsense deploy --out`) where users run it: --onnx FILE, a standard ONNX graph "
        "with the PyTorch model's predictions in onnxruntime, binary weights stored as bits "
        "(--qonnx: BipolarQuant / MultiThreshold for FINN and hls4ml); --c DIR, C99 files "
        "(model.h, model.c, main.c) with packed weights, integer thresholds and no heap. "
        "See docs/export.md.",
    )
    p.add_argument("--checkpoint", help="a run's checkpoint.pt")
    p.add_argument("--deployed", metavar="FILE", help="a deployed model (binsense deploy --out)")
    p.add_argument("--onnx", metavar="FILE", help="write an ONNX file (needs the export extra)")
    p.add_argument("--qonnx", action="store_true", help="the QONNX flavour of --onnx")
    p.add_argument("--c", metavar="DIR", help="write C99 sources to DIR")
    p.add_argument(
        "--target",
        choices=["host", "cortex-m4"],
        help="with --c: host (default; main.c reads raw images) or cortex-m4 (a Makefile "
        "for arm-none-eabi-gcc building model.o; README.md gives flash and RAM)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "tone-curves",
        help="plot the tone curves (code in -> planes set) of trained thermometer encoders",
        description="One panel per colour channel: for each checkpoint's input encoder "
        "(uniform, quantile or a trained glt), the number of planes set against the 8-bit "
        "ADC code; --uniform K adds the uniform K-level thermometer as the reference.",
    )
    p.add_argument("checkpoint", nargs="+", help="checkpoints of models with a thermometer")
    p.add_argument("--label", action="append", default=[], help="a label per checkpoint")
    p.add_argument("--uniform", type=int, metavar="K", help="add the uniform K-level curve")
    p.add_argument("-o", "--out", required=True, metavar="PNG", help="the figure file")
    p.set_defaults(func=cmd_tone_curves)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("recipes", help="list the training recipes, their goals and results")
    p.add_argument("-v", "--verbose", action="store_true", help="also print their fields")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("zoo", help="list the trained models shipped with binsense (zoo:NAME)")
    p.add_argument("-v", "--verbose", action="store_true", help="also print their model cards")
    p.set_defaults(func=cmd_zoo)

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
    p.add_argument(
        "--kernel",
        action="append",
        metavar="NAME",
        help="also print the scores and ranks of this named kernel (2x2, 2x2_v1, sign, ...; "
        "repeat it): a study's trained kernels beside the search's ranking",
    )
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the sorted score curves")
    p.add_argument("--demo", metavar="PATH", help="write a PNG: image, feature map, sign, DeSign")
    p.set_defaults(func=cmd_design_kernel)

    add_study_commands(sub)
    add_summary_command(sub, read_checkpoint=_read_summary_checkpoint)
    for path, leaf in _leaf_parsers(parser):
        # also accepted after the command; SUPPRESS keeps the value given before it
        own = leaf._option_string_actions  # never clash with a flag a command defines
        if "--debug" not in own:
            leaf.add_argument(
                "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
        # a leaf default would overwrite the flag given before the command: SUPPRESS
        if path in MEMORY_CHECKED_COMMANDS and "--allow-large" not in own:
            leaf.add_argument(
                "--allow-large",
                action="store_true",
                default=argparse.SUPPRESS,
                help="run even if the model's memory estimate exceeds the available memory",
            )
    return parser


def _leaf_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub-)command parser without sub-commands of its own, with its path."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _leaf_parsers(child, (*path, name))
            return
    yield path, parser


# ---------------------------------------------------------------- the safety net


def _write_log(e: BaseException, argv: Sequence[str]) -> Path | None:
    """The full traceback in the error log; ``None`` if it cannot be written (disk full)."""
    path = user_cache("last-error.log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
            f.write(f"binsense {' '.join(argv)}\n\n")
            f.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
    except OSError:
        return None
    return path


_OS_HINTS = {
    errno.ENOSPC: "no space left on the device (the disk is full); free some space, or point "
    "--out / BINSENSE_CACHE at another disk, and run again (finished work is kept)",
    errno.EDQUOT: "your disk quota is used up; free some space and run again (finished work "
    "is kept)",
    errno.EACCES: "permission denied; make it readable (or writable) for you (chmod/chown), "
    "or choose another path",
    errno.EPERM: "operation not permitted; check the permissions, or choose another path",
    errno.EROFS: "the file system is read-only; choose a writable folder (e.g. --out)",
    errno.ELOOP: "a symbolic link loop (a link that points back to itself or a parent "
    "folder); remove the link",
    errno.EISDIR: "it is a folder where a file is expected; name a file, or move the folder",
    errno.ENOTDIR: "a part of the path is a file where a folder is expected",
    errno.ENOENT: "it does not exist; check the path",
    errno.EEXIST: "it already exists; remove it or choose another path",
    errno.ENAMETOOLONG: "the path is too long; use a shorter one",
    errno.EIO: "an input/output error (a failing disk or network file system); check the disk",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or close other programs",
    errno.ENOMEM: "out of memory; use a smaller model or batch, or a machine with more memory",
}

_SQLITE_HINTS = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EROFS,
    "disk i/o error": errno.EIO,
}


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failure_line(e: BaseException) -> str | None:
    """What an environment error means, in one line; ``None`` if it is not one."""
    import sqlite3

    if isinstance(e, OSError) and e.errno in _OS_HINTS:
        names = [str(n) for n in (e.filename, e.filename2) if n is not None]
        where = f"{' -> '.join(repr(n) for n in names)}: " if names else ""
        return f"{where}{_OS_HINTS[e.errno]}."
    if isinstance(e, sqlite3.OperationalError):
        for text, code in _SQLITE_HINTS.items():
            if text in str(e).lower():
                return f"results store: {_OS_HINTS[code]}."
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        return (
            "out of memory; use a smaller width, model or batch size, or a machine with more "
            "memory (the estimate of binsense.resources counts weights only)."
        )
    if isinstance(e, OSError):
        return f"{_first_line(e) or type(e).__name__}."
    return None


def _report_failure(e: Exception, argv: Sequence[str], debug: bool) -> int:
    """One line for an error that is not a :class:`BinsenseError`; status 1."""
    log = _write_log(e, argv)
    if debug:
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    line = _failure_line(e)
    if line is None:
        where = f"the traceback is in {log}" if log else "the traceback could not be logged"
        line = (
            f"unexpected {type(e).__name__}: {_first_line(e) or '(no message)'} — a binsense "
            f"bug or an input it does not check yet; {where} (rerun with --debug to print it)."
        )
    print(f"error: {line}", file=sys.stderr)
    return 1


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


#: Write errors that are the machine's, not the user's: exit status 1 (disk full, quota,
#: I/O error). A read-only or forbidden path is the user's to change: status 2.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; every failure is one ``error: ...`` line, never a traceback.

    Exit status: 0 success, 2 a user mistake (:class:`BinsenseError`), 1 an error of the
    environment (disk full, permissions, ...) or an unexpected one (the traceback goes to
    the log file, and to stderr with ``--debug``), 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("BINSENSE_DEBUG", "") not in ("", "0")
    if not debug:  # a warning (e.g. a rebuilt cache entry) is one line, not two
        warnings.showwarning = _one_line_warning
    try:
        with _large_allowed_while(bool(getattr(args, "allow_large", False))):
            return int(args.func(args) or 0)
    except BinsenseError as e:
        if debug:
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 1 if getattr(e, "errno", None) in _ENVIRONMENT_ERRNOS else 2
    except BrokenPipeError:  # e.g. `binsense study results ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted; finished epochs/results are saved — rerun to resume.", file=sys.stderr)
        return 130
    except Exception as e:  # the safety net: one line, traceback to the log
        return _report_failure(e, argv, debug)


if __name__ == "__main__":
    sys.exit(main())
