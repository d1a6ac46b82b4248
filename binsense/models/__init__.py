"""Model registry: architectures selectable by name.

Each name maps to a builder ``f(info: DatasetInfo, **options) -> nn.Module``; a BNN and
its float twin (same layout, no binarisation, ReLU instead of sign) share a builder and
differ by ``binary``. Models take images in [0, 1]; their first stage normalises.

>>> from binsense.data import dataset_info
>>> model = build_model("vgg_small", dataset_info("cifar10"), width=0.25)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from binsense.data import DatasetInfo, dataset_info
from binsense.errors import BinsenseError, unknown_name
from binsense.models import bnn, cifar, resnet_bnn


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: builder, fixed options and the data set it targets."""

    name: str
    builder: Callable[..., nn.Module]
    description: str
    default_dataset: str
    fixed: dict[str, Any] = field(default_factory=dict)

    def options(self) -> list[str]:
        """Keyword options the builder accepts (besides the data-set info)."""
        params = inspect.signature(self.builder).parameters
        return [p for p in params if p != "info" and p not in self.fixed]


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    """Add an architecture to the registry (names must be unique)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def _register_twins(name: str, builder: Callable[..., nn.Module], what: str, ds: str) -> None:
    register(ModelSpec(name, builder, f"{what} BNN", ds, {"binary": True}))
    register(ModelSpec(f"{name}_float", builder, f"{what}, float twin", ds, {"binary": False}))


_register_twins("mnist_bnn", bnn.mnist_bnn, "MNIST conv", "mnist")
_register_twins("vgg_small", bnn.vgg_small, "VGG-small / BinaryNet", "cifar10")
_register_twins("cnv", bnn.cnv, "FINN CNV", "cifar10")
_RESNET18 = "ResNet-18-style BNN (ReCU/DeSign layout, design on/off)"
register(ModelSpec("resnet18_bnn", resnet_bnn.resnet18_bnn, _RESNET18, "cifar10"))
for _name, _build in {**cifar.RESNETS, **cifar.VGGS}.items():
    register(ModelSpec(_name, _build, f"CIFAR {_name} (float, batch_norm on/off)", "cifar10"))


def model_names() -> list[str]:
    """Registered model names."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` for ``name`` (clear error with a suggestion if unknown)."""
    if name not in _REGISTRY:
        raise unknown_name("model", name, _REGISTRY)
    return _REGISTRY[name]


def build_model(name: str, info: DatasetInfo, **options: Any) -> nn.Module:
    """Build model ``name`` for a data set described by ``info``.

    Unknown options raise :class:`BinsenseError` listing the valid ones.
    """
    spec = model_spec(name)
    valid = spec.options()
    bad = [k for k in options if k not in valid]
    if bad:
        raise BinsenseError(
            f"model {name!r} has no option {bad[0]!r}; valid options: {', '.join(valid)}."
        )
    return spec.builder(info, **spec.fixed, **options)


def check_model(name: str, info: DatasetInfo, **options: Any) -> nn.Module:
    """Build ``name`` on the meta device: validates name, options and shapes, allocates
    no weights (for fail-fast checks and parameter counts)."""
    with torch.device("meta"):
        return build_model(name, info, **options)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe_models() -> list[dict[str, Any]]:
    """One row per model: name, description, default data set and parameter count."""
    rows = []
    for name in model_names():
        spec = _REGISTRY[name]
        model = check_model(name, dataset_info(spec.default_dataset))
        rows.append(
            {
                "name": name,
                "description": spec.description,
                "dataset": spec.default_dataset,
                "params": count_parameters(model),
                "options": spec.options(),
            }
        )
    return rows


__all__ = [
    "ModelSpec",
    "build_model",
    "check_model",
    "count_parameters",
    "describe_models",
    "model_names",
    "model_spec",
    "register",
]
