"""Study S0's four findings, measured on a finished (or partial) S0 store.

    python benchmarks/s0_findings.py [--preset cpu] [--study studies/s0_fpn_bn.toml]

Prints a Markdown table per finding from the study's results store (never from logs):

(a) clean accuracy with BN at 4 bits vs 32 bits, per trained model;
(b) the clean-trained model's accuracy vs FPN level, per FPN type (BN 32 bits);
(c) each noise-trained model vs the clean-trained one under the noise it was trained with
    (same type, levels 5 % and 10 %, BN 32 bits);
(d) mean accuracy over every FPN type and level (BN 32 bits), per training noise, and
    the number of FPN types on which each model beats the clean-trained one.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

from binsense.study import load_study, study_rows


def _mean(values: list[float]) -> float:
    return 100 * statistics.fmean(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/s0_fpn_bn.toml")
    parser.add_argument("--preset", default="cpu")
    args = parser.parse_args()
    study = load_study(args.study, args.preset)
    rows = study_rows(study)
    acc: dict[tuple, list[float]] = defaultdict(list)  # (training, kind, type, level, bits)
    names: dict[str, object] = {}  # training key -> its train_noise value
    for r in rows:
        noise = r.get("train.train_noise", "none")
        names.setdefault(json.dumps(noise, sort_keys=True), noise)
        bits = r.get("param.bits") or r.get("param.bn_bits")
        key = (json.dumps(noise, sort_keys=True), r["kind"], r.get("param.type"),
               r.get("param.level"), bits)  # fmt: skip
        acc[key].append(r["accuracy"])
    label = {
        t: "clean" if v in (None, "none") else f"{v['type']} {v['level']:.0%}"
        for t, v in names.items()
    }
    types = sorted({k[2] for k in acc if k[2]})
    levels = sorted({k[3] for k in acc if k[3] is not None})

    def get(t, kind, typ=None, level=None, bits=None) -> float:
        return _mean(acc.get((t, kind, typ, level, bits), []))

    clean_t = next(t for t in names if label[t] == "clean")
    print("(a) BN bit-width, clean test images\n")
    print("| training | BN 32 (float) | BN 8 | BN 6 | BN 4 | BN 3 | BN 2 |")
    print("|---|---|---|---|---|---|---|")
    for t in names:
        cells = [get(t, "clean")] + [get(t, "bn_bits", bits=b) for b in (8, 6, 4, 3, 2)]
        print(f"| {label[t]} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")

    print("\n(b) clean-trained model vs FPN level (BN 32 / BN 4)\n")
    print("| FPN type | " + " | ".join(f"{lv:.0%}" for lv in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for typ in types:
        cells = [
            f"{get(clean_t, 'sensor_noise', typ, lv, 32):.1f} / "
            f"{get(clean_t, 'sensor_noise', typ, lv, 4):.1f}"
            for lv in levels
        ]
        print(f"| {typ} | " + " | ".join(cells) + " |")

    print("\n(c) noise-aware training under its own noise type (BN 32)\n")
    print("| training | test noise | level | clean-trained | noise-trained | gain (points) |")
    print("|---|---|---|---|---|---|")
    for t in names:
        if t == clean_t:
            continue
        typ = names[t]["type"]
        for lv in (0.05, 0.1):
            base, ours = (
                get(clean_t, "sensor_noise", typ, lv, 32),
                get(t, "sensor_noise", typ, lv, 32),
            )
            print(
                f"| {label[t]} | {typ} | {lv:.0%} | {base:.1f} | {ours:.1f} | {ours - base:+.1f} |"
            )

    print("\n(d) robustness across FPN types: mean over all types and levels (BN 32)\n")
    print("| training | clean | mean over FPN types x levels | types better than clean-trained |")
    print("|---|---|---|---|")
    for t in names:
        per_type = {
            typ: statistics.fmean(get(t, "sensor_noise", typ, lv, 32) for lv in levels)
            for typ in types
        }
        base = {
            typ: statistics.fmean(get(clean_t, "sensor_noise", typ, lv, 32) for lv in levels)
            for typ in types
        }
        wins = sum(per_type[typ] > base[typ] for typ in types)
        overall = statistics.fmean(per_type.values())
        print(f"| {label[t]} | {get(t, 'clean'):.1f} | {overall:.1f} | {wins}/{len(types)} |")


if __name__ == "__main__":
    main()
