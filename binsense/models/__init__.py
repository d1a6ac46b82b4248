"""Model registry: recipes selectable by name, with typed and validated options.

Each name maps to a :class:`ModelSpec`: a builder ``f(info, components, **shape)`` that
describes the network (widths, pools, strides, shortcuts) and the components it accepts
(:class:`~binsense.models.recipe.Components`: encoder, quantizers, norm, DeSign kernel,
groups, first-layer and head precision). A BNN and its float twin share a builder and
differ by ``binary``. Models take images in [0, 1]; their first stage is the encoder.
Every model is ``encoder -> blocks -> head``
(:class:`~binsense.models.recipe.RecipeModel`).

>>> from binsense.data import dataset_info
>>> model = build_model("vgg_small", dataset_info("cifar10"), width=0.25)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from binsense.data import DatasetInfo, dataset_info
from binsense.errors import BinsenseError, did_you_mean, sentence
from binsense.models import bnn, cifar, compact, resnet_bnn
from binsense.models.recipe import Components, RecipeModel
from binsense.registry import Registry, check_options

_BNN_COMPONENTS = tuple(f for f in Components.model_fields if f != "binary")
_RESNET_BNN_COMPONENTS = (
    "encoder", "weight_quantizer", "activation_quantizer", "bn_affine", "design",
    "design_coupled", "groups", "latent_clip",
)  # fmt: skip
_FLOAT_COMPONENTS = ("encoder", "norm")

#: Options renamed by the architecture change; the message says what to write instead.
_RENAMED = {
    "batch_norm": "norm = 'batch_norm' (true) or 'channel_affine' / 'none' (false)",
    "binary_classifier": "head = 'binary' (true) or 'float' (false)",
}


@dataclass(frozen=True)
class ModelSpec:
    """A registered recipe: builder, accepted components, defaults and target data set."""

    name: str
    builder: Callable[..., nn.Module]
    description: str
    default_dataset: str
    components: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)

    def shape_options(self) -> dict[str, Any]:
        """The builder's own keyword options (widths...) -> default."""
        return {k: v for k, v in _BUILDER_OPTIONS(self.builder).items()}

    def options(self) -> list[str]:
        """Every option the model takes: its shape options, then its components."""
        return [*self.shape_options(), *self.components]

    def option_defaults(self) -> dict[str, Any]:
        base = Components.model_fields
        comps = {c: self.defaults.get(c, base[c].default) for c in self.components}
        return {**self.shape_options(), **comps}

    def build(self, info: DatasetInfo, **options: Any) -> nn.Module:
        """Validate ``options`` (names, types, values) and build the model."""
        components, shape = self.validate(**options)
        return self.builder(info, components, **shape)

    def validate(self, **options: Any) -> tuple[Components, dict[str, Any]]:
        """``options`` checked by name, type and value, without building: the validated
        components and shape options (the checks that need the data set's image size
        happen in :meth:`build`)."""
        shape = {k: v for k, v in options.items() if k in self.shape_options()}
        comps = {k: v for k, v in options.items() if k in self.components}
        bad = [k for k in options if k not in shape and k not in comps]
        if bad:
            if bad[0] in _RENAMED:
                raise BinsenseError(
                    f"model option {bad[0]!r} is now {_RENAMED[bad[0]]} (model {self.name!r})."
                )
            raise BinsenseError(
                sentence(f"model {self.name!r} has no option {bad[0]!r}"
                         f"{did_you_mean(bad[0], self.options())}")
            )  # fmt: skip
        shape = check_options("model", self.name, self.builder, shape)
        try:
            components = Components(**{**self.defaults, **comps})
        except ValidationError as e:
            first = e.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            msg = first["msg"].removeprefix("Value error, ")
            raise BinsenseError(
                f"model {self.name!r}: option {key!r} = {first.get('input')!r} is invalid ({msg})."
            ) from None
        return components, shape


def _BUILDER_OPTIONS(builder: Callable[..., nn.Module]) -> dict[str, Any]:
    import inspect

    params = inspect.signature(builder).parameters
    return {n: p.default for n, p in params.items() if n not in ("info", "comp")}


MODELS: Registry[ModelSpec] = Registry("model")


def register(spec: ModelSpec) -> None:
    """Add a recipe to the registry (names must be unique)."""
    MODELS.add(spec.name, spec)


def _register_twins(name: str, builder: Callable[..., nn.Module], what: str, ds: str) -> None:
    register(ModelSpec(name, builder, f"{what} BNN", ds, _BNN_COMPONENTS))
    register(
        ModelSpec(f"{name}_float", builder, f"{what}, float twin", ds,
                  tuple(c for c in _BNN_COMPONENTS if c not in ("design", "design_coupled")),
                  {"binary": False})
    )  # fmt: skip


_register_twins("mnist_bnn", bnn.mnist_bnn, "MNIST conv", "mnist")
_register_twins("vgg_small", bnn.vgg_small, "VGG-small / BinaryNet", "cifar10")
_register_twins("cnv", bnn.cnv, "FINN CNV", "cifar10")
register(
    ModelSpec(
        "resnet18_bnn", resnet_bnn.resnet18_bnn,
        "ResNet-18-style BNN (ReCU/DeSign layout, design on/off)", "cifar10",
        _RESNET_BNN_COMPONENTS, {"activation_quantizer": "approx_sign"},
    )
)  # fmt: skip
register(
    ModelSpec("compact_bnn", compact.compact_bnn, "compact grouped BNN (binsense's S3 topology)",
              "cifar10", _BNN_COMPONENTS, {"groups": 4})
)  # fmt: skip
register(
    ModelSpec("compact_bnn_float", compact.compact_bnn, "compact grouped BNN, float twin",
              "cifar10", tuple(c for c in _BNN_COMPONENTS if c not in ("design", "design_coupled")),
              {"groups": 4, "binary": False})
)  # fmt: skip
register(
    ModelSpec(
        "resnet20_bnn", resnet_bnn.resnet20_bnn,
        "ResNet-20 1W1A, real-valued shortcuts (CIFAR ResNet-20 shape, ~0.26 Mbit)", "cifar10",
        _RESNET_BNN_COMPONENTS, {"activation_quantizer": "approx_sign"},
    )
)  # fmt: skip
for _name, _build in {**cifar.RESNETS, **cifar.VGGS}.items():
    _norms = "batch_norm/none/fixup" if _name in cifar.RESNETS else "batch_norm/none"
    register(
        ModelSpec(_name, _build, f"CIFAR {_name} (float, norm {_norms})", "cifar10",
                  _FLOAT_COMPONENTS, {"binary": False, "head": "float"})
    )  # fmt: skip


def model_names() -> list[str]:
    """Registered model names."""
    return MODELS.names()


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` for ``name`` (clear error with a suggestion if unknown)."""
    return MODELS.get(name)


def build_model(name: str, info: DatasetInfo, **options: Any) -> nn.Module:
    """Build model ``name`` for a data set described by ``info``.

    Options are checked by name, type and value (strictly: ``width = "wide"`` or a NaN
    width is an error, not a coerced value); problems raise :class:`BinsenseError`.
    """
    return model_spec(name).build(info, **options)


def check_model(name: str, info: DatasetInfo, **options: Any) -> nn.Module:
    """Build ``name`` on the meta device: validates name, options and shapes, allocates
    no weights (for fail-fast checks and parameter counts)."""
    with torch.device("meta"):
        return build_model(name, info, **options)


def upgrade_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Model options written before the recipe architecture, in today's names.

    ``batch_norm = false`` becomes ``norm = "channel_affine"`` in the BNN families and
    ``"none"`` in the float CIFAR models; ``binary_classifier`` becomes ``head``. Used
    when reading old checkpoints.
    """
    out = dict(options)
    if "batch_norm" in out:
        on = out.pop("batch_norm")
        bnn_family = "norm" in model_spec(name).components and name not in {
            *cifar.RESNETS,
            *cifar.VGGS,
        }
        out["norm"] = "batch_norm" if on else ("channel_affine" if bnn_family else "none")
    if "binary_classifier" in out:
        out["head"] = "binary" if out.pop("binary_classifier") else "float"
    return out


def component_choices() -> dict[str, list[str]]:
    """The names each component option accepts (with the options of each quantizer)."""
    from binsense.encoders import ENCODERS
    from binsense.layers.design import DESIGN_KERNELS
    from binsense.layers.norm import NORMS
    from binsense.quant.sign import QUANTIZERS

    def with_options(registry: Registry) -> list[str]:
        out = []
        for name in registry.names():
            opts = registry.options(name)
            inner = ", ".join(f"{k}={v!r}" for k, v in opts.items() if k != "info")
            out.append(f"{name}({inner})" if inner else name)
        return out

    return {
        "encoder": with_options(ENCODERS),
        "weight_quantizer / activation_quantizer": with_options(QUANTIZERS),
        "norm": NORMS.names(),
        "design": DESIGN_KERNELS.names(),
        "first_layer": ["float", "binary"],
        "head": ["binary", "float"],
    }


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe_models() -> list[dict[str, Any]]:
    """One row per model: name, description, default data set, parameter count, options
    (with defaults)."""
    rows = []
    for name in model_names():
        spec = model_spec(name)
        model = check_model(name, dataset_info(spec.default_dataset))
        rows.append(
            {
                "name": name,
                "description": spec.description,
                "dataset": spec.default_dataset,
                "params": count_parameters(model),
                "options": spec.options(),
                "defaults": spec.option_defaults(),
            }
        )
    return rows


__all__ = [
    "MODELS",
    "ModelSpec",
    "RecipeModel",
    "build_model",
    "check_model",
    "component_choices",
    "count_parameters",
    "describe_models",
    "model_names",
    "model_spec",
    "register",
    "upgrade_options",
]
