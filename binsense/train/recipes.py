"""Training recipes: named, documented training configurations that reach the field's
accuracy on a 2-core CPU (``binsense train --recipe NAME``, ``binsense recipes``).

A recipe is a set of :class:`~binsense.train.TrainConfig` fields, chosen by measuring
(``docs/training.md`` has the learning curves and the ablation), with the goal it was
made for and what it measured, where it has been run. Flags given with ``--recipe``
override its fields (``--epochs 5`` for a quick look; the run id then changes, as it
should). Every recipe trains on all 50,000 CIFAR-10 training images.

What the recipes share, from the literature (``../shared/research/TRAINING.md``):

- Adam with a one-cycle schedule and no weight decay on the latent weights (Liu et al.,
  "How do Adam and training strategies help BNNs optimization", ICML 2021);
- BinaryNet's latent-weight clipping to [-1, 1] (Courbariaux, Hubara et al., 2016);
- random crop (padding 4) and horizontal flip, label smoothing 0.1;
- the fast step of :mod:`binsense.train.accel`: bf16 where the CPU has it natively,
  channels-last, ``torch.compile``. Recorded accuracies are exact: the BNN recipes
  evaluate each epoch through the packed engine (``eval_engine = "binsense"``, the
  deployed model's own logits), the float one in fp32.

Each recipe ``NAME`` has a ``NAME-gpu`` variant for a CUDA device (bf16, larger batch,
learning rate scaled with it), ready for the day one is lent; it has not been run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from binsense.registry import Registry

#: The fast step every recipe uses (:mod:`binsense.train.accel`).
FAST_STEP = {"precision": "auto", "channels_last": True, "compile": True}

#: BNN training, shared by the CIFAR-10 BNN recipes.
BNN_CIFAR10 = {
    "dataset": "cifar10",
    "batch_size": 128,
    "optimizer": "adam",
    "schedule": "onecycle",
    "warmup": 0.25,
    "weight_decay": 0.0,
    "label_smoothing": 0.1,
    "crop_padding": 4,
    "flip": True,
    "threads": 2,
    "eval_engine": "binsense",  # each epoch's test accuracy by the packed engine (exact)
    **FAST_STEP,
}


@dataclass(frozen=True)
class Measured:
    """One measured run of a recipe: what it reached, in what time, where and how."""

    accuracy: float  # final test accuracy, fraction
    minutes: float  # wall time of the training, evaluation included
    machine: str
    date: str
    command: str
    seeds: tuple[float, ...] = ()  # final accuracies of further seeds


@dataclass(frozen=True)
class Recipe:
    """A named training configuration (module docstring)."""

    name: str
    description: str
    fields: dict[str, Any]
    goal: str
    measured: Measured | None = None
    gpu: dict[str, Any] = field(default_factory=dict)

    def config_fields(self) -> dict[str, Any]:
        """The :class:`~binsense.train.TrainConfig` fields of this recipe."""
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.fields.items()}

    def expected(self) -> str:
        """What a run gives, as measured (or that it has not been run here)."""
        m = self.measured
        if m is None:
            return "not yet measured"
        more = f" (other seeds {', '.join(f'{a:.1%}' for a in m.seeds)})" if m.seeds else ""
        return f"{m.accuracy:.1%} in {m.minutes:.0f} min{more}, {m.machine}, {m.date}"


RECIPES: Registry[Recipe] = Registry("recipe")


def register_recipe(recipe: Recipe) -> Recipe:
    """Add ``recipe`` and its ``-gpu`` variant (when it has one) to :data:`RECIPES`."""
    RECIPES.add(recipe.name, recipe)
    if recipe.gpu:
        RECIPES.add(
            f"{recipe.name}-gpu",
            Recipe(
                f"{recipe.name}-gpu",
                f"{recipe.description} — on one CUDA GPU",
                {**recipe.fields, "threads": None, **recipe.gpu},
                "a lent GPU: not run yet",
            ),
        )
    return recipe


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name`` (a clear error with a suggestion if none)."""
    return RECIPES.get(name)


def recipe_names() -> list[str]:
    return RECIPES.names()


_GPU = {"device": "cuda", "batch_size": 512, "threads": None}

register_recipe(
    Recipe(
        "cifar10-cnv-30min",
        "FINN CNV 1W1A (binary hidden layers, float first conv and head), 40 epochs",
        {
            **BNN_CIFAR10,
            "model": "cnv",
            "model_options": {"head": "float"},
            "epochs": 40,
            "lr": 0.003,
        },
        ">= 80 % in <= 30 min on a 2-core CPU",
        Measured(
            0.7963,
            36.3,
            "2-core AMD EPYC (AVX512-BF16)",
            "2026-12-07",
            "binsense train --recipe cifar10-cnv-30min --seed 0",
        ),  # fmt: skip
        gpu={**_GPU, "lr": 0.006},
    )
)
register_recipe(
    Recipe(
        "cifar10-cnv",
        "FINN CNV 1W1A (binary hidden layers, float first conv and head), 100 epochs",
        {
            **BNN_CIFAR10,
            "model": "cnv",
            "model_options": {"head": "float"},
            "epochs": 100,
            "lr": 0.003,
        },
        ">= 85 % in <= 2 h on a 2-core CPU",
        Measured(
            0.8175,
            93.1,
            "2-core AMD EPYC (AVX512-BF16)",
            "2026-12-07",
            "binsense train --recipe cifar10-cnv --seed 0",
        ),  # fmt: skip
        gpu={**_GPU, "lr": 0.006},
    )
)
register_recipe(
    Recipe(
        "cifar10-resnet20-bnn",
        "ResNet-20 1W1A with real-valued shortcuts (resnet20_bnn, 0.25 Mbit of binary "
        "weights), float stem and classifier, 120 epochs",
        {**BNN_CIFAR10, "model": "resnet20_bnn", "epochs": 120, "lr": 0.003},
        ">= 86 % in <= 2 h on a 2-core CPU",
        gpu={**_GPU, "lr": 0.006},
    )
)
register_recipe(
    Recipe(
        "cifar10-compact-binary",
        "S3's compact grouped BNN, fully binary: uniform 8-level thermometer encoder, "
        "binary first conv and binary head (< 1 Mbit), 80 epochs (about 3.3 h on the 2-core CPU)",
        {
            **BNN_CIFAR10,
            "model": "compact_bnn",
            "model_options": {"encoder": "uniform", "head": "binary"},
            "epochs": 80,
            "lr": 0.003,
        },
        ">= 75 % in <= 2 h on a 2-core CPU, under 1 Mbit",
        Measured(
            0.7664,
            299.3,
            "2-core AMD EPYC (AVX512-BF16), resumed once, partly contended",
            "2026-12-07",
            "binsense train --recipe cifar10-compact-binary --seed 0",
        ),  # fmt: skip
        gpu={**_GPU, "lr": 0.006},
    )
)
register_recipe(
    Recipe(
        "cifar10-vgg-small-gpu",
        "VGG-small / BinaryNet 1W1A at full width (128-256-512 channels, FC 1024; float "
        "first conv and classifier), 200 epochs on one CUDA GPU",
        {
            **BNN_CIFAR10,
            "model": "vgg_small",
            "model_options": {"head": "float"},
            "epochs": 200,
            "lr": 0.005,
            "batch_size": 256,
            "device": "cuda",
            "threads": None,
        },
        ">= 88 % in <= 10 min on one H100 (the literature: 88-92 % after ~600 epochs)",
    )
)
register_recipe(
    Recipe(
        "cifar10-resnet20-float",
        "float ResNet-20 with batch norm (He et al. 2016: 91.25 % in 164 epochs), SGD, "
        "cosine, 100 epochs (shortened to fit S1's grid)",
        {
            "dataset": "cifar10",
            "model": "resnet20",
            "epochs": 100,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "crop_padding": 4,
            "flip": True,
            "threads": 2,
            **FAST_STEP,
        },
        ">= 91 % (He et al.: 91.25 %)",
        Measured(
            0.8838,
            94.5,
            "2-core AMD EPYC (AVX512-BF16), contended",
            "2026-12-07",
            "binsense train --recipe cifar10-resnet20-float --seed 0",
        ),  # fmt: skip
        gpu={**_GPU, "lr": 0.2},
    )
)


__all__ = ["RECIPES", "Measured", "Recipe", "get_recipe", "recipe_names", "register_recipe"]
