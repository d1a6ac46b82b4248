"""One registry helper: names -> components, one lookup, one error wording.

Every name a user can type — a model, a quantizer, a norm, an encoder, a noise type, a
condition kind, a DeSign kernel, a data set — resolves through a :class:`Registry`. An
unknown name raises :class:`binsense.errors.UnknownNameError` worded by
:func:`binsense.errors.unknown_name` ("unknown model 'vgg_smal' — did you mean
'vgg_small'? (valid: ...)"), the same everywhere.

>>> QUANTIZERS = Registry("quantizer")
>>> @QUANTIZERS.register("ste_sign")
... class SteSign: ...
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from binsense.errors import BinsenseError, did_you_mean, sentence, unknown_name

T = TypeVar("T")

#: A component chosen by name: ``"ste_sign"`` or ``{name = "ste_sign", clip_value = 1.5}``.
ComponentSpec = str | Mapping[str, Any]


def split_spec(spec: ComponentSpec, kind: str) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a component spec (a name, or a table with a ``name`` key)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        return spec["name"], {k: v for k, v in spec.items() if k != "name"}
    raise BinsenseError(f"a {kind} is a name or a table {{name = ..., <options>}}, got {spec!r}.")


def _signature(factory: Callable[..., Any]) -> dict[str, tuple[Any, Any]]:
    """Keyword options of a factory: name -> (annotation, default)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable annotations: options are checked by name only
        hints = {}
    params = inspect.signature(factory).parameters
    return {
        n: (hints.get(n, Any), p.default)
        for n, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"
    }


def check_options(kind: str, name: str, factory: Callable[..., Any], options: Mapping) -> dict:
    """Options of component ``name`` checked by name and type (strict: no coercion of
    strings to numbers); returns them validated. One clear line on a problem."""
    signature = _signature(factory)
    out = {}
    for key, value in options.items():
        if key not in signature:
            valid = list(signature)
            hint = did_you_mean(key, valid) if valid else " (it has none)"
            raise BinsenseError(sentence(f"{kind} {name!r} has no option {key!r}{hint}"))
        annotation = signature[key][0]
        try:
            out[key] = TypeAdapter(annotation).validate_python(value, strict=True)
        except ValidationError as e:
            msg = e.errors()[0]["msg"]
            raise BinsenseError(
                f"{kind} {name!r}: option {key!r} = {value!r} is invalid ({msg})."
            ) from None
        except Exception:  # an annotation pydantic cannot validate: pass the value through
            out[key] = value
    return out


class Registry(Generic[T]):
    """Named components of one kind.

    Args:
        kind: what the names are, for messages (``"model"``, ``"noise type"``).
        normalize: maps a user spelling to the registered one before lookup (e.g.
            ``"CIFAR-10" -> "cifar10"``); default: the name as given.
        also_valid: further accepted forms handled outside the registry, listed in
            messages (``"imagefolder:PATH"``).
    """

    def __init__(
        self,
        kind: str,
        normalize: Callable[[str], str] | None = None,
        also_valid: tuple[str, ...] = (),
    ) -> None:
        self.kind = kind
        self._normalize = normalize
        self._also_valid = also_valid  # listed in messages (e.g. "imagefolder:PATH")
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name`` (names are unique); returns ``item``."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item)

    def resolve(self, name: str) -> str:
        """The registered spelling of ``name`` (clear error, with a suggestion, if none)."""
        valid = [*self._items, *self._also_valid]
        if not isinstance(name, str):
            raise unknown_name(self.kind, repr(name), valid)
        key = self._normalize(name) if self._normalize else name
        if key not in self._items:
            raise unknown_name(self.kind, name, valid)
        return key

    def get(self, name: str) -> T:
        """The component registered as ``name``."""
        return self._items[self.resolve(name)]

    def build(self, spec: ComponentSpec, **context: Any) -> Any:
        """Call the factory of a component spec with its (checked) options and ``context``."""
        name, options = split_spec(spec, self.kind)
        key = self.resolve(name)
        factory: Any = self._items[key]
        clash = [k for k in options if k in context]
        if clash:
            raise BinsenseError(
                f"{self.kind} {key!r}: {clash[0]!r} is set by binsense, not an option."
            )
        return factory(**check_options(self.kind, key, factory, options), **context)

    def options(self, name: str) -> dict[str, Any]:
        """Option name -> default of component ``name`` (for listings)."""
        return {k: d for k, (_, d) in _signature(self.get(name)).items()}

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = self._normalize(name) if self._normalize else name
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


__all__ = ["ComponentSpec", "Registry", "check_options", "split_spec"]
