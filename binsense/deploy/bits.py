"""Bit packing shared by the deployed ops, the kernels and the file format: ±1 -> bool,
bool -> int64 words (bit ``i % 64`` of word ``i // 64``) and back, and the SWAR popcount.
A leaf module: it imports only PyTorch.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

WORD = 64


# ---------------------------------------------------------------- bits


#: Weight of bit ``i`` in its byte: packing and unpacking work on bytes (8x less memory
#: than one int64 per bit), then the 8 bytes of a word are read as one little-endian
#: int64, so bit ``i`` of a word is bit ``i % 8`` of its byte ``i // 8``.
_BYTE_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_LITTLE = sys.byteorder == "little"


def pack_bits(bits: Tensor, dim: int = 1, pad_value: bool = False) -> Tensor:
    """Pack bool ``bits`` along ``dim`` into int64 words (bit ``i % 64`` of word
    ``i // 64``), padding the last word with ``pad_value``; ``dim`` becomes the word axis.

    Each group of 8 bits becomes a byte (a uint8 dot product with the bit weights), and 8
    bytes are reinterpreted as one int64 (little-endian hosts; elsewhere the bits are
    shifted into int64 words one by one)."""
    bits = bits.movedim(dim, -1)
    n = bits.shape[-1]
    words = -(-n // WORD)
    lead = bits.shape[:-1]
    if not _LITTLE:
        bits = _pad(bits, words * WORD, pad_value)
        wide = bits.reshape(*lead, words, WORD).to(torch.int64)
        shifts = torch.arange(WORD, device=bits.device, dtype=torch.int64)
        return (wide << shifts).sum(dim=-1).movedim(-1, dim)  # distinct bits: sum = or
    nbytes = -(-n // 8)
    bits = _pad(bits, nbytes * 8, pad_value)  # whole bytes, then whole words of bytes
    weights = _BYTE_BITS.to(bits.device)
    octets = bits.reshape(*lead, nbytes, 8).to(torch.uint8).mul_(weights).sum(-1, dtype=torch.uint8)
    octets = _pad(octets, words * 8, 0xFF if pad_value else 0)
    packed = octets.reshape(*lead, words, 8).contiguous().view(torch.int64).squeeze(-1)
    return packed.movedim(-1, dim)


def _pad(t: Tensor, size: int, value: bool | int) -> Tensor:
    """``t`` with its last dim filled up to ``size`` with ``value``."""
    n = t.shape[-1]
    if n == size:
        return t
    out = torch.full((*t.shape[:-1], size), value, dtype=t.dtype, device=t.device)
    out[..., :n] = t
    return out


def unpack_bits(words: Tensor, n: int, dim: int = 1) -> Tensor:
    """The inverse of :func:`pack_bits`: int64 ``words`` along ``dim`` -> the first ``n``
    bits (bool) along ``dim``."""
    words = words.movedim(dim, -1)
    lead, count = words.shape[:-1], words.shape[-1]
    if not _LITTLE:
        shifts = torch.arange(WORD, device=words.device, dtype=torch.int64)
        bits = ((words.unsqueeze(-1) >> shifts) & 1).to(torch.bool)  # bit 63 too
    else:
        octets = words.contiguous().view(torch.uint8).reshape(*lead, count * 8, 1)
        bits = (octets & _BYTE_BITS.to(words.device)).ne(0)
    bits = bits.reshape(*lead, count * WORD)[..., :n]
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
