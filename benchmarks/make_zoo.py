"""Put a finished recipe run into the model zoo (``binsense/zoo/NAME.{bsd,json}``).

    BINSENSE_DATA=../shared/data python benchmarks/make_zoo.py RUN_DIR NAME --recipe R

Converts the run's checkpoint to the integer program, checks it against the trained
PyTorch model (fp32) on the full test set (``deploy --check``: it must be exact, else
nothing is written), and writes the ``.bsd`` file and its model card: recipe, accuracy
(engine and PyTorch), data fingerprints, size, config hash, machine, date, and the
commands that made it (the run's own training command, from the recipe, and this one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

from binsense.compress.summary import summary
from binsense.data import DeviceLoader, dataset_info, load_dataset
from binsense.deploy import check_exact, convert
from binsense.deploy.fileformat import save_deployed
from binsense.evaluate import evaluate
from binsense.io import atomic_write_text
from binsense.train import TrainConfig, load_model
from binsense.train.accel import cpu_name
from binsense.train.recipes import get_recipe
from binsense.zoo import ZOO_DIR


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a finished run folder")
    p.add_argument("name", help="zoo name (e.g. cifar10-cnv-30min)")
    p.add_argument("--recipe", required=True, help="the recipe the run used")
    p.add_argument("--zoo", type=Path, default=ZOO_DIR)
    args = p.parse_args()

    provenance = json.loads((args.run / "config.json").read_text())
    metrics = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    model, config = load_model(args.run / "checkpoint.pt")
    recipe = TrainConfig(**get_recipe(args.recipe).config_fields(), seed=config.seed)
    if recipe.config_hash() != config.config_hash():
        print(f"error: the run is not recipe {args.recipe!r} (config hash)", file=sys.stderr)
        return 2
    info = dataset_info(config.dataset)
    test = load_dataset(config.dataset, "test")
    loader = DeviceLoader(test, 500, shuffle=False)
    t0 = time.perf_counter()
    deployed = convert(model)
    check = check_exact(model, loader, deployed)
    print(f"deploy check: {check.line()} ({time.perf_counter() - t0:.0f} s)")
    if not check.exact or check.logit_mismatches:
        print("error: the deployed program is not exact; nothing written", file=sys.stderr)
        return 1
    torch_acc = evaluate(model, loader).accuracy
    engine_acc = evaluate(deployed, loader).accuracy
    size = summary(model, (info.in_channels, *info.image_size))
    args.zoo.mkdir(parents=True, exist_ok=True)
    bsd = args.zoo / f"{args.name}.bsd"
    meta = {"model": config.model, "dataset": config.dataset,
            "input_shape": [info.in_channels, *info.image_size], "zoo": args.name}  # fmt: skip
    save_deployed(deployed, bsd, meta)
    env = provenance["environment"]
    minutes = sum(m["epoch_time_s"] + m.get("eval_time_s", 0.0) for m in metrics) / 60
    started = datetime.fromisoformat(provenance["started"])
    ended = datetime.fromtimestamp((args.run / "checkpoint.pt").stat().st_mtime, timezone.utc)
    wall = round((ended - started).total_seconds() / 60, 1)
    card = {
        "name": args.name,
        "recipe": args.recipe,
        "dataset": config.dataset,
        "model": config.model,
        "model_options": config.model_options,
        "seed": config.seed,
        "config_hash": config.config_hash(),
        "accuracy": {"engine": engine_acc, "pytorch_fp32": torch_acc, "test_images": len(test)},
        "deploy_check": check.line(),
        "data": provenance["data"],
        "binary_weight_bits": size.params_1bit,
        "total_bits": size.total_bits,
        "mbit": round(size.mbit, 4),
        "fully_binary": size.fully_binary,
        "file_bytes": bsd.stat().st_size,
        "training": {
            "epochs": config.epochs,
            "epoch_minutes": round(minutes, 1),
            # a resumed run's provenance starts at its last resume: no whole wall time
            "wall_minutes": wall if wall >= minutes else None,
            "precision": env.get("precision", "fp32"),
            "machine": env.get("cpu") or cpu_name(),
            "threads": env.get("threads"),
            "torch": env.get("torch"),
            "started": provenance.get("started"),  # (the last resume, if resumed)
        },
        "commands": [
            f"binsense train --recipe {args.recipe} --seed {config.seed} --out RUN",
            f"python benchmarks/make_zoo.py RUN {args.name} --recipe {args.recipe}",
        ],
        "made": f"{date.today()} on {cpu_name()}",
    }
    atomic_write_text(args.zoo / f"{args.name}.json", json.dumps(card, indent=2) + "\n")
    print(f"wrote {bsd} ({card['file_bytes']:,} B) and its card: engine {engine_acc:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
