"""The model zoo: trained recipes shipped with the package as deployed ``.bsd`` files.

Each entry is two files in this folder: ``NAME.bsd`` (the integer program: thresholds
and bit-packed weights, no code; :mod:`binsense.deploy.fileformat`) and ``NAME.json``,
its model card — the recipe, the accuracy measured on the full test set (by the packed
engine, and by the trained PyTorch model in fp32: they agree exactly, ``deploy
--check``), the data fingerprints, the size, the machine and the command that made it.

``zoo:NAME`` is accepted wherever a deployed file is (``binsense infer zoo:NAME``,
``binsense export --deployed zoo:NAME``, ``binsense deploy --load zoo:NAME``), offline:
the files are part of the installed package. ``binsense zoo`` lists the entries.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binsense.errors import BinsenseError, did_you_mean

#: The prefix that names a zoo entry instead of a path.
ZOO_PREFIX = "zoo:"

ZOO_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ZooEntry:
    """One shipped model: its ``.bsd`` file and its card (plain JSON data)."""

    name: str
    path: Path
    card: dict[str, Any]

    def line(self) -> str:
        c = self.card
        acc = c.get("accuracy", {}).get("engine")
        kb = self.path.stat().st_size / 1024
        accuracy = f"{acc:.2%}" if isinstance(acc, float) else "?"
        return (
            f"{self.name:<24} {c.get('dataset', '?'):<8} {accuracy:>7}  {kb:6.0f} KB  "
            f"{c.get('binary_weight_bits', 0) / 1e6:.3f} Mbit  recipe {c.get('recipe', '?')}"
        )


def zoo_entries(folder: Path | None = None) -> list[ZooEntry]:
    """Every entry with both files in ``folder`` (default: the package's), by name."""
    out = []
    for card_file in sorted((folder or ZOO_DIR).glob("*.json")):
        bsd = card_file.with_suffix(".bsd")
        if bsd.is_file():
            card = json.loads(card_file.read_text(encoding="utf-8"))
            out.append(ZooEntry(card_file.stem, bsd, card))
    return out


def zoo_entry(name: str, folder: Path | None = None) -> ZooEntry:
    """The entry called ``name`` (one clear line listing the others if there is none)."""
    entries = {e.name: e for e in zoo_entries(folder)}
    if name not in entries:
        hint = did_you_mean(name, list(entries)) if entries else " (it is empty)"
        raise BinsenseError(f"the zoo has no model {name!r}{hint}; `binsense zoo` lists them.")
    return entries[name]


def resolve_deployed_path(path: str | os.PathLike) -> Path:
    """``zoo:NAME`` -> the shipped file; any other path as it is."""
    text = os.fspath(path)
    if isinstance(text, str) and text.startswith(ZOO_PREFIX):
        return zoo_entry(text[len(ZOO_PREFIX) :]).path
    return Path(text)


__all__ = ["ZOO_DIR", "ZOO_PREFIX", "ZooEntry", "resolve_deployed_path", "zoo_entries", "zoo_entry"]
