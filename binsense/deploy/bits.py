"""Bit packing shared by the deployed ops, the kernels and the file format: ±1 -> bool,
bool -> int64 words (bit ``i % 64`` of word ``i // 64``) and back, and the SWAR popcount.
A leaf module: it imports only PyTorch.
"""

from __future__ import annotations

import torch
from torch import Tensor

WORD = 64


# ---------------------------------------------------------------- bits


def pack_bits(bits: Tensor, dim: int = 1, pad_value: bool = False) -> Tensor:
    """Pack bool ``bits`` along ``dim`` into int64 words (bit ``i % 64`` of word
    ``i // 64``), padding the last word with ``pad_value``; ``dim`` becomes the word axis."""
    bits = bits.movedim(dim, -1)
    n = bits.shape[-1]
    words = -(-n // WORD)
    if words * WORD != n:
        fill = torch.full((*bits.shape[:-1], words * WORD - n), pad_value, dtype=torch.bool)
        bits = torch.cat([bits, fill.to(bits.device)], dim=-1)
    bits = bits.reshape(*bits.shape[:-1], words, WORD).to(torch.int64)
    shifts = torch.arange(WORD, device=bits.device, dtype=torch.int64)
    packed = (bits << shifts).sum(dim=-1)  # distinct bits: the sum is the bitwise or
    return packed.movedim(-1, dim)


def unpack_bits(words: Tensor, n: int, dim: int = 1) -> Tensor:
    """The inverse of :func:`pack_bits`: int64 ``words`` along ``dim`` -> the first ``n``
    bits (bool) along ``dim``."""
    words = words.movedim(dim, -1)
    shifts = torch.arange(WORD, device=words.device, dtype=torch.int64)
    bits = ((words.unsqueeze(-1) >> shifts) & 1).to(torch.bool)  # bit 63 too: >> keeps it
    bits = bits.reshape(*words.shape[:-1], words.shape[-1] * WORD)[..., :n]
    return bits.movedim(-1, dim)


def popcount64(words: Tensor) -> Tensor:
    """Set bits of each int64 word (int32), by the SWAR bit-count (Hacker's Delight 5-1)."""
    x = words - ((words >> 1) & 0x5555555555555555)  # masks clear the sign extension
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return ((x * 0x0101010101010101) >> 56).to(torch.int32) & 0x7F  # byte sums, wrapping


def to_bits(x: Tensor) -> Tensor:
    """±1 activations -> bool (+1 -> True)."""
    return x > 0


__all__ = ["WORD", "pack_bits", "popcount64", "to_bits", "unpack_bits"]
