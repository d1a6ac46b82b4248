"""Compare two exports of study results (``binsense study results --format csv``) row by row.

Rows are matched on everything that identifies them — training, data set, model, seed,
grid values, condition kind and parameters, draw, data fingerprint — but not on ids,
hashes or times, so a refactor that renames ids can be checked for identical numbers.
Condition parameters renamed for one vocabulary (``instances`` / ``trials`` -> ``draws``)
are matched under their new name.

    python benchmarks/compare_results.py before.csv after.csv
"""

from __future__ import annotations

import argparse
import csv
import statistics

RENAMED = {"param.instances": "param.draws", "param.trials": "param.draws"}
IGNORED = {
    "run_id", "config_hash", "condition_id", "trained_at", "evaluated_at", "accuracy",
    "loss", "condition", "study", "binsense",
}  # fmt: skip


def read_rows(path: str) -> dict[tuple, tuple[float, float]]:
    """Row key -> (accuracy, loss)."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            merged: dict[str, str] = {}
            for k, v in row.items():
                k = RENAMED.get(k, k)
                if v != "" or k not in merged:
                    merged[k] = v
            key = tuple(sorted((k, v) for k, v in merged.items() if k not in IGNORED and v))
            out[key] = (float(merged["accuracy"]), float(merged["loss"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args()
    a, b = read_rows(args.before), read_rows(args.after)
    same = sum(1 for k in a if k in b and a[k] == b[k])
    differ = sum(1 for k in a if k in b and a[k] != b[k])
    unmatched = len(set(a) ^ set(b))
    mean_a = statistics.mean(v[0] for v in a.values())
    mean_b = statistics.mean(v[0] for v in b.values())
    print(
        f"rows {len(a)} -> {len(b)}: identical accuracy and loss {same}, different {differ}, "
        f"unmatched {unmatched}; mean accuracy {mean_a:.4f} -> {mean_b:.4f}"
    )


if __name__ == "__main__":
    main()
