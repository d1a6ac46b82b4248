r"""Paired comparisons: training group B minus training group A, condition by condition.

A study evaluates every training under the same conditions, on the same test images, with
the same sensor instances and noise draws (a condition seeds draw *d* the same way for
every model). Two trainings are therefore compared best *paired*: for one condition,
draw *d* of B against draw *d* of A, which removes the image-to-image and
sensor-to-sensor variation that both share. This module computes those paired
differences and their confidence intervals; ``binsense study compare`` prints them, and a
study file's ``[[report.compare]]`` blocks add them to the report.

**Selectors.** A side of the comparison is a *training group*: the trainings that differ
only by seed (the report's grouping). It is chosen with a selector, ``key=value`` pairs
separated by commas (``variant=GLT-8``, ``model=mnist_bnn,train_noise=none``). A key is
a training-grid key of the study (``variant``, ``seed``, ``train_noise``, ...) or a
TrainConfig field, dotted into tables (``model``, ``model_options.design``,
``train_noise.per``); a value is read as a TOML value when it is one (``0``, ``0.05``,
``true``, ``{type = "pixel_offset", level = 0.05}``) and as text otherwise
(``NBC-8``). A selector must pick exactly one training group; if ``--b`` alone picks
several, those that agree with ``--a`` on the keys ``--b`` does not name are kept (so in
a grid of ``model`` x ``variant``, ``--a model=vgg_small,variant=sign --b
variant=DeSign-2D`` compares within ``vgg_small``). Anything else is one
:class:`~binsense.errors.BinsenseError` line naming the valid keys or values. The
selectors live in :mod:`binsense.study.selector`, which the study schema imports too.

**Robustness** (``relative_to``, ``--relative-to clean``). Whether B *resists* a
condition better than A is not whether it scores higher there: B may start higher. With
a reference condition (a label such as ``clean``), every accuracy is first taken relative
to the same training's own mean accuracy under the reference, :math:`a_{sk} - \bar
a_s^{\mathrm{ref}}`, so the paired difference is B's change minus A's change ("B loses
*d* points less"); the statistics below are unchanged. A seed pair without the
reference is left out; the reference itself is not listed.

**Pairing.** Every training of A is paired with the training of B that has the same
seed (within a group, the seed is the only thing that varies). Trainings without a
partner are reported as unpaired and left out. For a condition, the draws of a pair are
matched by draw index as stored; both rows must come from the same test images (the
same data fingerprint), otherwise the comparison is refused.

**Statistics** (:func:`paired_difference`). With accuracies :math:`a_{sk}` and
:math:`b_{sk}` of seed pair :math:`s` and draw :math:`k`, the paired differences are
:math:`d_{sk} = b_{sk} - a_{sk}`; per seed, :math:`\bar d_s = \frac{1}{K_s}\sum_k d_{sk}`
over the draws both stored; the estimate is :math:`\bar d = \frac1S\sum_s \bar d_s`
(each seed weighs the same) with the two-sided Student-t interval

.. math:: \bar d \pm t_{1-\alpha/2,\,S-1}\, \frac{s_{\bar d}}{\sqrt S},\qquad
          s_{\bar d}^2 = \frac{1}{S-1}\sum_s (\bar d_s - \bar d)^2 .

Why Student-t over per-seed means, not over all :math:`S K` differences and not a
bootstrap: the draws of one seed share the two trained models, so they are *not*
independent replicates of the training comparison — treating the :math:`SK` differences
as independent would shrink the interval by up to :math:`\sqrt K` for no reason. The
seed means are independent (each seed trains both models afresh) and their spread
contains the draw-to-draw variation (:math:`\mathrm{Var}\,\bar d_s =
\sigma^2_\mathrm{seed} + \sigma^2_\mathrm{draw}/K`), so the t interval over the seed
means is the standard analysis of a balanced two-stage design with the seed as the
cluster (Student, "The probable error of a mean", *Biometrika* 6, 1908; Montgomery,
*Design and Analysis of Experiments*, on nested designs). A percentile bootstrap would
need more than the 3-5 seeds a study has: with 3 seeds there are only 10 distinct
resamples, and its interval is too narrow. The t interval is exact for normal seed
means and wide for small :math:`S` (:math:`t_{0.975,2} = 4.30`), as it should be.

Two caveats, stated in every output. The draws are the *same* sensor instances / noise
draws for every seed and model (draw *d* of a condition is seeded by *d* alone), so a
draw's effect is shared by all seeds and cancels from the spread of the seed means: the
interval is conditional on the evaluated instances, not on new ones (more draws narrow
that gap). With a single seed pair the interval is taken over that pair's draws
(:math:`t_{K-1}` over :math:`d_{1k}`): it says how sure we are about *these two trained
models*, not about the training recipes. With one seed and one draw there is no
interval. Identical trainings give differences of exactly 0 and a zero-width interval.

The t quantile is computed exactly for integer degrees of freedom (Abramowitz & Stegun
26.7.3-4, inverted by bisection), so no SciPy is needed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binsense.errors import BinsenseError
from binsense.study.export import csv_safe, markdown_table
from binsense.study.selector import (
    Arm,
    arms_of_study,
    check_comparisons,
    pair_trainings,
    parse_selector,
    select_group,
)

if TYPE_CHECKING:  # the schema imports torch; parsing a selector does not need it
    from binsense.study.schema import Study

#: Confidence level of every interval.
CONFIDENCE = 0.95
#: Output formats of :func:`format_comparison`.
COMPARE_FORMATS = ("table", "csv", "md")
#: Parameters preferred as the x axis of a sweep, in this order.
_SWEEP_ORDER = ("level", "eta", "snr_db", "bits", "bn_bits")
#: One sentence on the method, used by the CLI, the report and the figure.
METHOD = (
    "Paired difference B − A in accuracy points: the same test images, sensor instances "
    "and noise draws (matched by condition and draw index); mean over seeds of each seed "
    "pair's mean over draws, with a 95 % Student-t interval over the seed means (draws of "
    "one seed share the trained models, so they are not independent; the interval is "
    "conditional on the evaluated sensor instances / draws). With one seed pair the "
    "interval is over its draws and covers only these two trained models."
)

# ---------------------------------------------------------------- statistics


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` (integer >= 1) degrees of freedom.

    Abramowitz & Stegun 26.7.3 (odd ``df``) and 26.7.4 (even ``df``), with
    θ = atan(t / √df): a finite series in cos θ, exact up to rounding.
    """
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        total, term = 0.0, math.cos(theta)
        for j in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * j) / (2 * j + 1)
        return 2 / math.pi * (theta + s * total)
    total, term = 0.0, 1.0
    for j in range(1, df // 2 + 1):
        total += term
        term *= c2 * (2 * j - 1) / (2 * j)
    return s * total


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t critical value: ``t`` with P(|T| < t) = ``confidence``.

    ``t_quantile(0.95, 2) = 4.3027``, ``t_quantile(0.95, 1) = 12.706``; ``df`` must be a
    positive integer. Bisection on :func:`_t_two_sided` to machine precision.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < confidence:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if _t_two_sided(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def t_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval of the mean of ``values``.

    ``mean ± t_{(1+c)/2, n-1} · s / √n`` with ``s`` the sample standard deviation; with
    one value the bounds are NaN (no interval); equal values give a zero-width one.
    """
    if not values:
        return math.nan, math.nan, math.nan
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    sd = statistics.stdev(values)
    if sd == 0:
        return mean, mean, mean
    half = t_quantile(confidence, len(values) - 1) * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


# ---------------------------------------------------------------- the plan as compare sees it


@dataclass(frozen=True)
class ConditionInfo:
    """One evaluated condition: id, kind, parameters, short label, draws in the plan."""

    condition_id: str
    kind: str
    params: dict[str, Any]
    label: str
    draws: int


@dataclass(frozen=True)
class CompareSource:
    """What a comparison reads: the trainings, the conditions, the stored rows."""

    name: str
    arms: tuple[Arm, ...]
    conditions: tuple[ConditionInfo, ...]
    rows: tuple[dict[str, Any], ...]
    facet: dict[str, str]
    sweep: dict[str, list[str]]


def source_of_study(study: Study, rows: Sequence[Mapping[str, Any]] | None = None) -> CompareSource:
    """A study's plan and its stored rows (``rows``: :func:`~binsense.study.export.study_rows`
    output, read from the store when not given)."""
    from binsense.study.export import study_rows
    from binsense.study.schema import condition_labels

    labels = condition_labels(study.evaluations)
    conditions = tuple(
        ConditionInfo(ev.condition_id, ev.kind, ev.condition.params(), labels[ev.condition_id],
                      ev.draws)
        for ev in study.evaluations
    )  # fmt: skip
    return CompareSource(
        name=study.name,
        arms=tuple(arms_of_study(study.trainings)),
        conditions=conditions,
        rows=tuple(study_rows(study) if rows is None else rows),
        facet=dict(study.report.facet),
        sweep={k: list(v) for k, v in study.report.sweep.items()},
    )


def load_source(
    path: str | os.PathLike, preset: str | None = None, out: str | os.PathLike | None = None
) -> CompareSource:
    """What ``binsense study compare STUDY`` reads: a study file (TOML; ``preset`` and
    ``out`` as for ``study report``) or the study folder it ran into, read through the
    file next to it (``studies/x/`` -> ``studies/x.toml``, with ``out`` that folder).

    Raises:
        BinsenseError: a folder without its study file next to it (the training-grid keys
            that selectors use are in the file); any :func:`load_study` error.
    """
    from binsense.study.schema import load_study

    p = Path(path)
    if p.is_dir():
        toml = p.with_suffix(".toml")
        if not toml.is_file():
            raise BinsenseError(
                f"{str(p)!r} is a folder and no study file {str(toml)!r} is next to it; pass "
                f"the study file it was run from (with --out {p})."
            )
        p, out = toml, (out if out is not None else path)
    return source_of_study(load_study(p, preset, out=out))


# ---------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class PairedDifference:
    """One condition's paired difference B − A (accuracies as fractions).

    ``pairs``: the (seed, draw) pairs used; ``seeds``: seed pairs with at least one;
    ``low``/``high``: the 95 % interval of ``mean`` (NaN when there is none);
    ``over``: what the interval is over (``"seeds"``, ``"draws of one seed"``, ``""``).
    """

    condition: ConditionInfo
    pairs: int
    seeds: int
    mean_a: float
    mean_b: float
    mean: float
    low: float
    high: float
    over: str

    @property
    def excludes_zero(self) -> bool | None:
        """Whether the interval excludes 0 (``None``: no interval)."""
        if math.isnan(self.low):
            return None
        return self.low > 0 or self.high < 0


def _reference_mean(
    run_id: str, reference: ConditionInfo, rows: Mapping[tuple[str, str, int], Mapping[str, Any]]
) -> float | None:
    """A training's mean accuracy over the stored draws of ``reference`` (None: none)."""
    found = [
        r["accuracy"]
        for d in range(reference.draws)
        if (r := rows.get((run_id, reference.condition_id, d))) is not None
    ]
    return math.fsum(found) / len(found) if found else None


def paired_difference(
    condition: ConditionInfo,
    pairs: Sequence[tuple[Arm | None, Arm]],
    rows: Mapping[tuple[str, str, int], Mapping[str, Any]],
    confidence: float = CONFIDENCE,
    reference: ConditionInfo | None = None,
) -> PairedDifference | None:
    """The paired difference of one condition (module docstring); ``None`` if no draw of
    any pair is stored for both sides. With ``reference``, each accuracy is taken relative
    to its training's mean accuracy under ``reference`` (a pair lacking it is skipped).
    A pair ``(None, b)`` has no A: with ``reference`` its difference is B's own change
    from the reference (a condition's effect on one training group,
    :mod:`binsense.study.claims`).

    Raises:
        BinsenseError: the two rows of a pair come from different test images.
    """
    per_seed: list[tuple[float, float, float]] = []  # (mean a, mean b, mean d) per seed
    first: list[float] = []
    count = 0
    for a, b in pairs:
        base_a = base_b = 0.0
        if reference is not None:
            ref_a = 0.0 if a is None else _reference_mean(a.run_id, reference, rows)
            ref_b = _reference_mean(b.run_id, reference, rows)
            if ref_a is None or ref_b is None:
                continue
            base_a, base_b = ref_a, ref_b
        da, db, dd = [], [], []
        for draw in range(condition.draws):
            rb = rows.get((b.run_id, condition.condition_id, draw))
            ra = rb if a is None else rows.get((a.run_id, condition.condition_id, draw))
            if ra is None or rb is None:
                continue
            if a is not None and ra["data_fingerprint"] != rb["data_fingerprint"]:
                raise BinsenseError(
                    f"condition {condition.label!r}: runs {a.run_id} and {b.run_id} were "
                    f"evaluated on different test images (fingerprints "
                    f"{str(ra['data_fingerprint'])[:16]}… and "
                    f"{str(rb['data_fingerprint'])[:16]}…), "
                    "so they cannot be paired; compare trainings on the same data set."
                )
            da.append(0.0 if a is None else ra["accuracy"] - base_a)
            db.append(rb["accuracy"] - base_b)
            dd.append(db[-1] - da[-1])
        if dd:
            n = len(dd)
            per_seed.append((math.fsum(da) / n, math.fsum(db) / n, math.fsum(dd) / n))
            count += n
            if not first:
                first = dd
    if not per_seed:
        return None
    seed_diffs = [d for _, _, d in per_seed]
    if len(per_seed) >= 2:
        mean, low, high = t_interval(seed_diffs, confidence)
        over = "seeds"
    else:
        mean, low, high = t_interval(first, confidence)
        mean = seed_diffs[0]
        over = "draws of one seed" if len(first) >= 2 else ""
    return PairedDifference(
        condition=condition,
        pairs=count,
        seeds=len(per_seed),
        mean_a=math.fsum(m for m, _, _ in per_seed) / len(per_seed),
        mean_b=math.fsum(m for _, m, _ in per_seed) / len(per_seed),
        mean=mean,
        low=low,
        high=high,
        over=over,
    )


@dataclass(frozen=True)
class Comparison:
    """B − A for every condition with paired results (:func:`compare`)."""

    name: str
    study: str
    a: str
    b: str
    pairs: tuple[tuple[Arm, Arm], ...]
    unpaired: tuple[Arm, ...]
    rows: tuple[PairedDifference, ...]
    facet: dict[str, str]
    sweep: dict[str, list[str]]
    relative_to: str | None = None

    def describe(self) -> str:
        """One line: the two groups, the seeds they are paired on and the reference."""
        seeds = ", ".join(str(a.seed) for a, _ in self.pairs) or "none"
        text = f"B = {self.b} minus A = {self.a}, paired on seed ({seeds})"
        if self.relative_to is not None:
            text += (
                f"; accuracies relative to each training's own {self.relative_to!r} "
                "accuracy, so B − A is B's change minus A's change (robustness)"
            )
        if self.unpaired:
            left = "; ".join(f"{a.group} seed {a.seed}" for a in self.unpaired)
            text += f"; without a partner (left out): {left}"
        return text


def reference_condition(source: CompareSource, label: str) -> ConditionInfo:
    """The condition of ``source`` whose label is ``label`` (``relative_to``).

    Raises:
        BinsenseError: no condition has that label (the message lists the labels).
    """
    for c in source.conditions:
        if c.label == label:
            return c
    labels = ", ".join(repr(c.label) for c in source.conditions[:12])
    more = ", ..." if len(source.conditions) > 12 else ""
    raise BinsenseError(
        f"no condition is labelled {label!r}, so accuracies cannot be taken relative to it; "
        f"the study's conditions: {labels}{more}."
    )


def compare(
    source: CompareSource,
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    name: str | None = None,
    confidence: float = CONFIDENCE,
    relative_to: str | None = None,
) -> Comparison:
    """The paired comparison B − A of ``source`` (a :class:`CompareSource`), condition by
    condition, in plan order; conditions with no paired row are left out. ``relative_to``:
    a condition label (e.g. ``"clean"``); accuracies become changes from it (module
    docstring, *Robustness*)."""
    pairs, unpaired, label_a, label_b = pair_trainings(source.arms, a, b)
    reference = None if relative_to is None else reference_condition(source, relative_to)
    index = {(r["run_id"], r["condition_id"], r["draw"]): r for r in source.rows}
    diffs = [
        d
        for c in source.conditions
        if c is not reference
        and (d := paired_difference(c, pairs, index, confidence, reference)) is not None
    ]
    return Comparison(
        name=name or f"{label_b} vs {label_a}",
        study=source.name,
        a=label_a,
        b=label_b,
        pairs=tuple(pairs),
        unpaired=tuple(unpaired),
        rows=tuple(diffs),
        facet=source.facet,
        sweep=source.sweep,
        relative_to=relative_to,
    )


# ---------------------------------------------------------------- output


def _pp(value: float) -> str:
    return "" if math.isnan(value) else f"{100 * value:+.2f}"


def _pct(value: float) -> str:
    return "" if math.isnan(value) else f"{100 * value:.2f}"


TABLE_HEADER = [
    "condition", "pairs", "seeds", "A acc. (%)", "B acc. (%)", "B − A (points)",
    "95 % CI (points)", "CI over", "excludes 0",
]  # fmt: skip


def table_header(comparison: Comparison) -> list[str]:
    """:data:`TABLE_HEADER`, or with ``relative_to`` the columns of changes."""
    if comparison.relative_to is None:
        return list(TABLE_HEADER)
    ref = comparison.relative_to
    return [
        "condition", "pairs", "seeds", f"A change from {ref} (points)",
        f"B change from {ref} (points)", "B − A (points)", *TABLE_HEADER[6:],
    ]  # fmt: skip


def table_rows(comparison: Comparison) -> list[list[str]]:
    """The comparison as text cells (:func:`table_header`): accuracies in %, or changes
    in points with ``relative_to``."""
    level = _pct if comparison.relative_to is None else _pp
    out = []
    for d in comparison.rows:
        ci = "" if math.isnan(d.low) else f"[{_pp(d.low)}, {_pp(d.high)}]"
        sure = {None: "", True: "yes", False: "no"}[d.excludes_zero]
        out.append([d.condition.label, str(d.pairs), str(d.seeds), level(d.mean_a),
                    level(d.mean_b), _pp(d.mean), ci, d.over, sure])  # fmt: skip
    return out


_CSV_HEADER = [
    "condition", "condition_id", "kind", "params", "pairs", "seeds", "acc_a_pct",
    "acc_b_pct", "diff_points", "ci_low_points", "ci_high_points", "ci_over", "a", "b",
    "relative_to",
]  # fmt: skip


def _number(value: float) -> float | str:
    """A CSV number in % or points (a float, so a negative one is not escaped as text)."""
    return "" if math.isnan(value) else round(100 * value, 10)


def format_comparison(comparison: Comparison, fmt: str = "table") -> str:
    """The comparison as an aligned text table (with a heading line), CSV or Markdown.

    CSV has one row per condition, numbers in % (accuracy; with ``relative_to`` the change
    from the reference, in points) and percentage points (difference, interval bounds;
    empty where there is no interval), formula-like text
    cells quoted (:func:`~binsense.study.export.csv_safe`); Markdown escapes every cell.
    """
    if fmt not in COMPARE_FORMATS:
        raise BinsenseError(f"unknown format {fmt!r}; use one of {', '.join(COMPARE_FORMATS)}.")
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(_CSV_HEADER)
        for d in comparison.rows:
            c = d.condition
            cells = [
                c.label, c.condition_id, c.kind, json.dumps(c.params, sort_keys=True), d.pairs,
                d.seeds, _number(d.mean_a), _number(d.mean_b), _number(d.mean), _number(d.low),
                _number(d.high), d.over, comparison.a, comparison.b, comparison.relative_to or "",
            ]  # fmt: skip
            writer.writerow([csv_safe(v) for v in cells])
        return buf.getvalue()
    rows, header = table_rows(comparison), table_header(comparison)
    if fmt == "md":
        from binsense.study.export import md_block

        head = f"{md_block(comparison.describe())}.\n\n"
        return head + (markdown_table(header, rows) if rows else "(no paired rows yet)\n")
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = [f"{comparison.describe()}.", METHOD, ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    if not rows:
        lines.append("(no paired rows yet)")
    return "\n".join(lines) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sweep_param(
    kind: str, conds: Sequence[ConditionInfo], sweep: Mapping[str, list[str]]
) -> str | None:
    """The x axis of one kind's panel: a numeric parameter that takes several values."""
    params = [c.params for c in conds]
    keys = list(dict.fromkeys(k for p in params for k in p))
    numeric = [
        k
        for k in keys
        if all(_is_number(p.get(k)) for p in params) and len({p[k] for p in params}) > 1
    ]
    chosen = [k for k in sweep.get(kind, numeric) if k in numeric]
    if not chosen:
        return None
    return next((k for k in _SWEEP_ORDER if k in chosen), chosen[0])


def comparison_figure(comparison: Comparison) -> bytes | None:
    """A PNG: B − A with its 95 % interval per condition; ``None`` with no rows.

    One panel per condition kind that sweeps a numeric parameter (x = that parameter:
    ``level``, ``eta``, ``bits``...; one line per combination of the kind's other
    varying parameters, or one panel per value of a ``[report] facet`` parameter), and
    one panel of the remaining conditions by name, each panel on its own y scale. A
    dashed line marks 0.
    """
    if not comparison.rows:
        return None
    from matplotlib.figure import Figure

    from binsense.study.schema import varying_keys

    by_kind: dict[str, list[PairedDifference]] = defaultdict(list)
    for d in comparison.rows:
        by_kind[d.condition.kind].append(d)
    panels: list[tuple[str, str | None, list[tuple[str, list[PairedDifference]]]]] = []
    loose: list[PairedDifference] = []
    for kind, members in by_kind.items():
        param = _sweep_param(kind, [d.condition for d in members], comparison.sweep)
        if param is None:
            loose += members
            continue
        facet = comparison.facet.get(kind)
        skip = [param] if facet is None else [param, facet]
        series_keys = varying_keys([d.condition.params for d in members], skip=skip)
        facets = (
            list(dict.fromkeys(d.condition.params.get(facet) for d in members)) if facet else [None]
        )
        for value in facets:
            chosen = [d for d in members if facet is None or d.condition.params.get(facet) == value]
            series: dict[str, list[PairedDifference]] = defaultdict(list)
            for d in sorted(chosen, key=lambda d: d.condition.params[param]):
                p = d.condition.params
                series[", ".join(f"{k}={p.get(k)}" for k in series_keys)].append(d)
            title = kind if facet is None else f"{kind}, {facet}={value}"
            panels.append((title, param, list(series.items())))
    if loose:
        panels.append(("conditions", None, [("", loose)]))
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.4 * cols, 4.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()  # own y scale per panel
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, param, series) in zip(axes, panels, strict=False):
        ax.axhline(0, color="0.3", ls="--", lw=1)
        for i, (key, members) in enumerate(series):
            if param is None:
                xs: list[float] = list(range(len(members)))
            else:
                xs = [float(d.condition.params[param]) for d in members]
            ys = [100 * d.mean for d in members]
            lo = [0.0 if math.isnan(d.low) else 100 * (d.mean - d.low) for d in members]
            hi = [0.0 if math.isnan(d.high) else 100 * (d.high - d.mean) for d in members]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=4, capsize=3,
                        ls="-" if param else "none", color=f"C{i % 10}",
                        label=key or None)  # fmt: skip
        if param is None:
            names = [d.condition.label for d in series[0][1]]
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize="small")
        else:
            values = sorted({float(d.condition.params[param]) for _, m in series for d in m})
            if all(v.is_integer() and v > 0 for v in values) and values[-1] >= 4 * values[0]:
                ax.set_xscale("log", base=2)
                ax.set_xticks(values, [f"{v:g}" for v in values])
                ax.minorticks_off()
            ax.set_xlabel(param)
            if any(key for key, _ in series):
                ax.legend(fontsize="x-small")
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel(
            "B − A (accuracy points)"
            if comparison.relative_to is None
            else f"B − A of the change from {comparison.relative_to} (points)"
        )
        ax.grid(alpha=0.3)
    named = "" if comparison.name == f"{comparison.b} vs {comparison.a}" else f"{comparison.name}: "
    change = "" if comparison.relative_to is None else f", change from {comparison.relative_to}"
    fig.suptitle(
        f"{named}B = {comparison.b} minus A = {comparison.a}{change}\n"
        f"{comparison.study}; mean and 95 % Student-t interval over "
        + (
            f"{len(comparison.pairs)} seed pairs"
            if len(comparison.pairs) > 1
            else "the draws of one seed pair (these two models only)"
        ),
        fontsize="medium",
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def write_figure(comparison: Comparison, path: str | os.PathLike) -> Path:
    """Write :func:`comparison_figure` to ``path`` atomically (PNG).

    Raises:
        BinsenseError: nothing to draw (no paired rows yet); the file cannot be written.
    """
    from binsense.io import atomic_write

    png = comparison_figure(comparison)
    if png is None:
        raise BinsenseError(
            f"no paired results for {comparison.name!r} yet, so there is no figure to write."
        )
    return atomic_write(path, lambda f: f.write(png))


# ---------------------------------------------------------------- reports


@dataclass(frozen=True)
class ReportSection:
    """One ``[[report.compare]]`` block of a report: heading, text, table, figure."""

    title: str
    text: str
    header: list[str]
    rows: list[list[str]]
    figure_name: str
    png: bytes | None


def report_sections(study: Study, rows: Sequence[Mapping[str, Any]]) -> list[ReportSection]:
    """The report's paired comparisons, one per ``[[report.compare]]`` block of ``study``
    (``rows``: the report's :func:`~binsense.study.export.study_rows`)."""
    source = source_of_study(study, rows)
    sections = []
    for i, spec in enumerate(study.report.compare, 1):
        try:
            comparison = compare(source, spec.a, spec.b, spec.name, relative_to=spec.relative_to)
        except BinsenseError as e:  # e.g. two data sets: said in the report, not hidden
            title = spec.name or f"comparison {i}"
            sections.append(ReportSection(title, f"Not computed: {e}", [], [], "", None))
            continue
        slug = re.sub(r"[^A-Za-z0-9]+", "_", comparison.name).strip("_").lower()
        sections.append(
            ReportSection(
                title=comparison.name,
                text=f"{comparison.describe()}.",
                header=table_header(comparison),
                rows=table_rows(comparison),
                figure_name=f"compare_{i}_{slug}"[:80],
                png=comparison_figure(comparison),
            )
        )
    return sections


__all__ = [
    "COMPARE_FORMATS",
    "CONFIDENCE",
    "METHOD",
    "Arm",
    "CompareSource",
    "Comparison",
    "ConditionInfo",
    "PairedDifference",
    "ReportSection",
    "check_comparisons",
    "compare",
    "comparison_figure",
    "format_comparison",
    "load_source",
    "paired_difference",
    "pair_trainings",
    "parse_selector",
    "reference_condition",
    "report_sections",
    "select_group",
    "t_interval",
    "t_quantile",
    "table_header",
    "write_figure",
]
