"""Carry an image folder to a lent GPU machine in one small file, byte for byte.

    python benchmarks/device_data.py pack ../shared/data/cifar10-jpeg .devdata/cifar10.pack
    python benchmarks/device_data.py unpack .devdata/cifar10.pack /tmp/data/cifar10-jpeg

A device call carries at most 64 MiB of working tree, and ``../shared`` does not travel.
CIFAR-10 as JPEG is 60,000 files of about 900 bytes (55 MB; 236 MB on disk), and the
checkout is about 18 MB: too much together. The files are encoded alike, so every one
begins with the same ~620 bytes (JPEG markers, quantisation and Huffman tables). A pack
stores that common prefix once and each file's remaining bytes: about 18 MB. Unpacking
writes the original files exactly, so binsense's data fingerprints, and so run ids and
stored rows, are those of ``../shared/data``.

Format (little-endian; reading it runs no code from it): ``BSPACK1\\n``, the index's
length (8 bytes), the index as UTF-8 JSON (``prefix``: the prefix length; ``files``:
``[relative path, suffix length, sha256 of the whole file]``), the prefix, then the
suffixes in index order. ``unpack`` checks every file's sha256 and refuses paths that
leave the destination.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
from pathlib import Path, PurePosixPath

MAGIC = b"BSPACK1\n"


def pack(root: Path, out: Path) -> dict[str, int]:
    """Pack every file under ``root``; returns byte counts (files, original, packed)."""
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    if not paths:
        raise SystemExit(f"error: {root} holds no files")
    data = [p.read_bytes() for p in paths]
    prefix = len(os.path.commonprefix(data))  # (of the smallest and largest: fast)
    files = [
        [PurePosixPath(p.relative_to(root)).as_posix(), len(d) - prefix,
         hashlib.sha256(d).hexdigest()]
        for p, d in zip(paths, data, strict=True)
    ]  # fmt: skip
    index = json.dumps({"prefix": prefix, "files": files}).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(out.name + ".part")
    with open(temp, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(index)) + index + data[0][:prefix])
        for d in data:
            f.write(d[prefix:])
    os.replace(temp, out)
    return {"files": len(data), "bytes": sum(map(len, data)), "packed": out.stat().st_size}


def unpack(pack_file: Path, dest: Path) -> int:
    """Write the packed files under ``dest`` (checked by sha256); returns their count."""
    blob = pack_file.read_bytes()
    if not blob.startswith(MAGIC):
        raise SystemExit(f"error: {pack_file} is not a pack (made by `device_data.py pack`)")
    (size,) = struct.unpack_from("<Q", blob, len(MAGIC))
    start = len(MAGIC) + 8
    index = json.loads(blob[start : start + size].decode())
    pos = start + size
    prefix = blob[pos : pos + index["prefix"]]
    pos += index["prefix"]
    root = dest.resolve()
    for name, length, digest in index["files"]:
        target = (root / name).resolve()
        if root not in target.parents:
            raise SystemExit(f"error: {pack_file}: the path {name!r} leaves {dest}")
        data = prefix + blob[pos : pos + length]
        pos += length
        if hashlib.sha256(data).hexdigest() != digest:
            raise SystemExit(f"error: {pack_file} is damaged at {name!r} (sha256 differs)")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return len(index["files"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="pack an image folder into one file")
    a.add_argument("root", type=Path)
    a.add_argument("out", type=Path)
    b = sub.add_parser("unpack", help="write a pack's files into a folder")
    b.add_argument("pack", type=Path)
    b.add_argument("dest", type=Path)
    args = p.parse_args(argv)
    if args.command == "pack":
        counts = pack(args.root, args.out)
        print(f"packed {counts['files']} files, {counts['bytes']:,} bytes into "
              f"{counts['packed']:,} bytes: {args.out}")  # fmt: skip
    else:
        print(f"unpacked {unpack(args.pack, args.dest)} files into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
