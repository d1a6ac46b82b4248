"""Study reports: Markdown and a self-contained HTML page, with tables and figures.

Everything comes from the results store (never from logs), opened read-only. The report
is built as a list of blocks (headings, paragraphs, tables, figures) rendered twice: to
``report.md`` (figures linked as ``figures/*.png``; every string escaped by
:func:`~binsense.study.export.md_inline` / :func:`~binsense.study.export.md_block`, so
user text cannot become a link, raw HTML or a heading) and to ``report.html`` (figures
embedded as base64, every string passed through :func:`html.escape`, no external
resources). The report is written to ``<study folder>/report[-<preset>]`` (a preset name
that is not a plain folder name is refused) or to a folder of the caller's choice — the
way to report on a study in a read-only folder.

Grid points that failed (a diverged training, a draw whose evaluation failed) are listed
in a *Failures* section with their reasons. Results of one run on different test data
(another fingerprint) are never pooled: the report refuses them with one line naming both
fingerprints.

Which figures appear depends only on what the plan contains — no condition kind is
special-cased except ``clean``, the reference condition of the registry:

- for every kind and every numeric parameter that takes several values in the plan
  (sensor-noise ``level``, weight-noise ``eta``, BN ``bits``, ...): accuracy vs that
  parameter, one line per training group and per combination of the kind's other varying
  parameters (e.g. noise type), mean ± std band over draws and seeds; with a ``clean``
  condition a second panel shows the normalised accuracy (accuracy / clean accuracy of
  the same run), and the clean accuracy is drawn as a dashed line; integer sweeps over a
  wide range (bit-widths) get a log2 axis;
- when the training grid varies something other than the seed: a heatmap of training
  group x test condition (mean accuracy).

A *training group* is the set of runs that differ only by seed; their draws are pooled.
Axis labels take the unit from the condition field's ``description`` when it has one,
else from :data:`AXIS_LABELS`.

The *Trained models* table gives each model's deployed size — Mbit (2^20 bits) and
whether it is fully binary, from :func:`binsense.compress.summary.summary` of the trained
(pruned) model, which the runner stores in the run row — and lists the hidden trainings
(those that only serve as distillation teachers or fine-tuning starts) below the grid's
trainings.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

import binsense
from binsense.data.registry import IMAGEFOLDER_PREFIX
from binsense.errors import BinsenseError
from binsense.io import atomic_write, atomic_write_text, safe_child
from binsense.study.export import (
    markdown_table,
    md_block,
    md_inline,
    study_rows,
)
from binsense.study.plan import shown_status
from binsense.study.schema import (
    Evaluation,
    Study,
    Training,
    condition_labels,
    load_study,
    varying_keys,
)
from binsense.study.store import DataMismatchError, ResultStore, mismatch_message, utc_now

#: The registry's reference condition: normalised accuracy divides by its accuracy.
REFERENCE_KIND = "clean"

#: Axis labels (with units) for common parameter names, used when the condition's field
#: has no ``description``.
AXIS_LABELS = {
    "level": "noise σ (fraction of full scale)",
    "eta": "η (relative to the layer's weight scale)",
    "snr_db": "SNR (dB)",
    "bits": "bit-width (bits)",
}

_DPI = 120
_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class _Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Table:
    header: list[str]
    rows: list[list[Any]]


@dataclass(frozen=True)
class _Figure:
    name: str
    title: str
    png: bytes


@dataclass
class _Stats:
    """Accuracies (and normalised accuracies) pooled over draws and seeds."""

    acc: list[float] = field(default_factory=list)
    norm: list[float] = field(default_factory=list)

    @staticmethod
    def _mean_std(values: list[float]) -> tuple[float, float]:
        if not values:
            return math.nan, math.nan
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def accuracy(self) -> tuple[float, float]:
        return self._mean_std(self.acc)

    def normalised(self) -> tuple[float, float]:
        return self._mean_std(self.norm)


def _pct(mean_std: tuple[float, float]) -> str:
    mean, std = mean_std
    return "" if math.isnan(mean) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Data:
    """The plan's stored results, indexed for tables and figures."""

    def __init__(self, study: Study, rows: list[dict[str, Any]]) -> None:
        self.study = study
        self.group_keys = [k for k in study.varied if k != "seed"]
        self.group_of = {t.run_id: t.label(self.group_keys) for t in study.trainings}
        if not self.group_keys:
            self.group_of = dict.fromkeys(self.group_of, "all runs")
        self.groups = list(dict.fromkeys(self.group_of.values()))
        self.labels = condition_labels(study.evaluations)
        self.evaluations = {ev.condition_id: ev for ev in study.evaluations}
        per_run: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in rows:
            per_run[r["run_id"], r["condition_id"]].append(r["accuracy"])
        self.per_run = per_run
        self.stored_runs = {run for run, _ in per_run}
        reference = next((e for e in study.evaluations if e.kind == REFERENCE_KIND), None)
        self.reference = reference
        clean = {
            t.run_id: statistics.fmean(per_run[t.run_id, reference.condition_id])
            for t in study.trainings
            if reference is not None and per_run.get((t.run_id, reference.condition_id))
        }
        pooled: dict[tuple[str, str], _Stats] = defaultdict(_Stats)
        for r in rows:
            stats = pooled[self.group_of[r["run_id"]], r["condition_id"]]
            stats.acc.append(r["accuracy"])
            if clean.get(r["run_id"]):
                stats.norm.append(r["accuracy"] / clean[r["run_id"]])
        self.pooled = pooled

    def has_rows(self, run_id: str) -> bool:
        """Whether any draw of ``run_id`` is stored."""
        return run_id in self.stored_runs

    def run_stats(self, run_id: str, condition_id: str) -> tuple[float, float, int]:
        values = self.per_run.get((run_id, condition_id), [])
        mean, std = _Stats._mean_std(values)
        return mean, std, len(values)


# ---------------------------------------------------------------- figures


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return buf.getvalue()


def _axis_label(ev: Evaluation, param: str) -> str:
    info = type(ev.condition).model_fields.get(param)
    if info is not None and info.description:
        return f"{param}: {info.description}"
    return AXIS_LABELS.get(param, param)


def sweep_params(evaluations: Sequence[Evaluation]) -> list[str]:
    """Parameters of one kind's conditions that are numeric everywhere and take several values."""
    params = [ev.condition.params() for ev in evaluations]
    keys = dict.fromkeys(k for p in params for k in p)
    return [
        k
        for k in keys
        if all(_is_number(p.get(k)) for p in params) and len({p[k] for p in params}) > 1
    ]


def _sweep_figure(data: _Data, kind: str, param: str) -> _Figure:
    """Accuracy (and normalised accuracy) vs ``param`` for one condition kind.

    With a ``[report] facet`` for the kind: one accuracy panel per value of the facet
    parameter instead (same y range, one legend).
    """
    evs = [ev for ev in data.study.evaluations if ev.kind == kind]
    facet = data.study.report.facet.get(kind)
    skip = [param] if facet is None else [param, facet]
    series_keys = varying_keys([ev.condition.params() for ev in evs], skip=skip)
    series: dict[tuple[str, str], list[Evaluation]] = defaultdict(list)
    for group in data.groups:
        for ev in sorted(evs, key=lambda ev: ev.condition.params()[param]):
            params = ev.condition.params()
            series[group, ", ".join(f"{k}={params[k]}" for k in series_keys)].append(ev)
    if facet is None:
        panels = [("accuracy", "test accuracy (%)", None)]
        if data.reference is not None:
            panels.append(("normalised", "normalised accuracy (% of clean)", None))
        cols = len(panels)
    else:
        values = list(dict.fromkeys(ev.condition.params().get(facet) for ev in evs))
        panels = [("accuracy", "test accuracy (%)", v) for v in values]
        cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(6.4 * cols, 4.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=facet is not None).ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    xs_all = sorted({ev.condition.params()[param] for ev in evs})
    keys = list(dict.fromkeys(key for _, key in series))
    for ax, (stat, ylabel, facet_value) in zip(axes, panels, strict=False):
        if facet is not None:
            ax.set_title(f"{facet}={facet_value}", fontsize="medium")
        colours: dict[str, str] = {}
        for (group, key), members in series.items():
            points = []
            for ev in members:
                if facet is not None and ev.condition.params().get(facet) != facet_value:
                    continue
                stats = data.pooled.get((group, ev.condition_id))
                mean, std = getattr(stats, stat)() if stats else (math.nan, math.nan)
                if not math.isnan(mean):
                    points.append((ev.condition.params()[param], 100 * mean, 100 * std))
            if not points:
                continue
            xs, means, stds = zip(*points, strict=True)
            label = " · ".join(p for p in (group if len(data.groups) > 1 else "", key) if p)
            if len(data.groups) > 1:  # colour = training, line style = condition series
                colour, style = f"C{data.groups.index(group) % 10}", _STYLES[keys.index(key) % 4]
            else:
                colour, style = f"C{keys.index(key) % 10}", "-"
            (line,) = ax.plot(xs, means, marker="o", color=colour, ls=style, label=label or kind)
            colours.setdefault(group, colour)
            lo = [m - s for m, s in zip(means, stds, strict=True)]
            hi = [m + s for m, s in zip(means, stds, strict=True)]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.18, linewidth=0)
        if stat == "accuracy" and data.reference is not None and colours:
            for group, colour in colours.items():
                ref = data.pooled.get((group, data.reference.condition_id))
                if ref is not None and ref.acc:
                    tint = colour if len(colours) > 1 else "0.3"
                    ax.axhline(100 * ref.accuracy()[0], color=tint, ls="--", lw=1)
            ax.plot([], [], color="0.3", ls="--", lw=1, label="clean accuracy")
        if all(isinstance(x, int) and x > 0 for x in xs_all) and xs_all[-1] >= 4 * xs_all[0]:
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs_all, [str(x) for x in xs_all])
            ax.minorticks_off()
        ax.set_xlabel(_axis_label(evs[0], param))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", title="mean ± std over draws and seeds",
                    title_fontsize="x-small")  # fmt: skip
    title = f"{kind}: accuracy vs {param}"
    fig.suptitle(f"{title}\n{_subtitle(data)}", fontsize="medium")
    return _Figure(f"{kind}_vs_{param}", title, _png(fig))


def _reference_bars(data: _Data) -> _Figure | None:
    """Clean accuracy per training group: mean ± std over seeds, one dot per run."""
    ref = data.reference
    if ref is None or len(data.groups) < 2:
        return None
    fig = Figure(figsize=(max(5.0, 0.9 * len(data.groups) + 2), 4.6), layout="constrained")
    ax = fig.add_subplot()
    for i, group in enumerate(data.groups):
        runs = [t.run_id for t in data.study.trainings if data.group_of[t.run_id] == group]
        per_run = [data.per_run.get((r, ref.condition_id)) for r in runs]
        accs = [100 * statistics.fmean(v) for v in per_run if v]
        if not accs:
            continue
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        ax.bar(i, statistics.fmean(accs), yerr=std, color=f"C{i % 10}", alpha=0.6, capsize=4)
        ax.plot([i] * len(accs), accs, "k.", ms=5)
    ax.set_xticks(range(len(data.groups)), data.groups, rotation=30, ha="right",
                  fontsize="small")  # fmt: skip
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    title = "clean accuracy per training (bars: mean ± std over seeds; dots: runs)"
    ax.set_title(f"{title}\n{_subtitle(data)}", fontsize="medium")
    return _Figure("clean_accuracy_per_training", "clean accuracy per training", _png(fig))


def _size_figure(data: _Data, runs: list[dict[str, Any]]) -> _Figure | None:
    """Clean accuracy against deployed size (Mbit) of the trainings of a study that
    prunes or distils: one series without and one with knowledge distillation, each
    point one run (its pruning target written beside it), the 1 Mbit budget dashed."""
    trainings = [
        t for t in data.study.trainings
        if t.config.prune is not None or t.config.distill is not None
    ]  # fmt: skip
    if not trainings:
        return None
    swept = {t.run_id for t in trainings}
    trainings = [  # with the unpruned models of the same model and width: the sweep's start
        t for t in data.study.trainings
        if t.run_id in swept or any(_same_sweep(t, s) for s in trainings)
    ]  # fmt: skip
    size_of = {r["run_id"]: r.get("size") for r in runs if isinstance(r.get("size"), dict)}
    ref = data.reference
    series: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for t in trainings:
        size = size_of.get(t.run_id) or {}
        accs = data.per_run.get((t.run_id, ref.condition_id)) if ref is not None else None
        if size.get("mbit") is None or not accs:
            continue
        kd = "with KD" if t.config.distill is not None else "without KD"
        target = t.config.prune.target if t.config.prune is not None else 0.0
        series[kd].append((size["mbit"], 100 * statistics.fmean(accs), f"{target:.0%}"))
    if sum(len(v) for v in series.values()) < 2:
        return None
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for i, name in enumerate(("without KD", "with KD")):
        points = sorted(series.get(name, []))
        if not points:
            continue
        xs, ys, tags = zip(*points, strict=True)
        ax.plot(xs, ys, "o-" if name == "without KD" else "s--", color=f"C{i}", label=name)
        for x, y, tag in points:
            ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize="x-small", color=f"C{i}")  # fmt: skip
    ax.axvline(1.0, color="0.5", ls=":", lw=1, label="1 Mbit")
    ax.set_xscale("log")
    ax.set_xlabel("deployed size (Mbit, 1 Mbit = 2^20 bits; log scale)")
    ax.set_ylabel(f"test accuracy (%), {data.labels[ref.condition_id]}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", title="labels: share of units pruned", title_fontsize="x-small")
    title = "accuracy vs size along the pruning sweep"
    ax.set_title(f"{title}\n{_subtitle(data)}", fontsize="medium")
    return _Figure("accuracy_vs_mbit", title, _png(fig))


def _same_sweep(t: Training, pruned: Training) -> bool:
    """``t`` is the unpruned, undistilled model of ``pruned``'s sweep (same data set, model
    and options)."""
    a, b = t.config, pruned.config
    return (
        a.prune is None and a.distill is None and a.dataset == b.dataset
        and a.model == b.model and a.model_options == b.model_options
    )  # fmt: skip


def _heatmap(data: _Data) -> _Figure | None:
    """Mean accuracy of every training group x test condition (grid varies training)."""
    if len(data.groups) < 2:
        return None
    options = data.study.report
    cols = [
        ev for ev in data.study.evaluations if options.in_heatmap(ev.kind, ev.condition.params())
    ]
    if len(cols) < 2:  # one column says nothing that the clean-accuracy bars do not
        return None
    grid = [
        [
            100 * data.pooled[g, ev.condition_id].accuracy()[0]
            if (g, ev.condition_id) in data.pooled
            else math.nan
            for ev in cols
        ]
        for g in data.groups
    ]
    fig = Figure(figsize=(max(6.0, 0.75 * len(cols) + 3), max(3.0, 0.55 * len(data.groups) + 2)))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [data.labels[ev.condition_id] for ev in cols],
                  rotation=45, ha="right", fontsize="small")  # fmt: skip
    ax.set_yticks(range(len(data.groups)), data.groups, fontsize="small")
    finite = [v for row in grid for v in row if not math.isnan(v)]
    middle = (min(finite) + max(finite)) / 2 if finite else 0
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize="x-small",
                        color="black" if value > middle else "white")  # fmt: skip
    ax.set_xlabel("test condition")
    ax.set_ylabel("training (" + ", ".join(data.group_keys) + ")")
    title = "accuracy: training x test condition"
    if options.heatmap:
        shown = ", ".join(f"{k}={v}" for k, v in options.heatmap.items())
        title += f" ({shown})"
    ax.set_title(f"{title}\n{_subtitle(data)}", fontsize="medium")
    fig.colorbar(image, ax=ax, label="test accuracy (%)")
    return _Figure("heatmap_training_x_condition", title, _png(fig))


def _short_dataset(name: str) -> str:
    """``imagefolder:/long/path/name`` -> ``imagefolder:name``."""
    if name.lower().startswith(IMAGEFOLDER_PREFIX):
        return IMAGEFOLDER_PREFIX + Path(name[len(IMAGEFOLDER_PREFIX) :]).name
    return name


def _subtitle(data: _Data) -> str:
    """Models, data sets and seeds of the figure: the seeds with stored rows, and the
    plan's count where a partial study has fewer (``1 of 2 seeds``)."""
    study = data.study
    models = sorted({t.config.model for t in study.trainings})
    datasets = sorted({_short_dataset(t.config.dataset) for t in study.trainings})
    planned = {t.config.seed for t in study.trainings}
    stored = {t.config.seed for t in study.trainings if data.has_rows(t.run_id)}
    seeds = f"{len(planned)} seed(s)" if stored == planned else (
        f"{len(stored)} of {len(planned)} seeds (partial)"
    )  # fmt: skip
    return f"{', '.join(models)} on {', '.join(datasets)}, {seeds}"


def _averages_table(data: _Data) -> _Table | None:
    """Per training group: mean (normalised) accuracy over each kind's numeric sweep."""
    grids: dict[tuple[str, str], list[Evaluation]] = defaultdict(list)
    swept: dict[str, list[str]] = {}
    for kind in dict.fromkeys(ev.kind for ev in data.study.evaluations):
        if kind == REFERENCE_KIND:
            continue
        evs = [ev for ev in data.study.evaluations if ev.kind == kind]
        swept[kind] = sweep_params(evs)
        if not swept[kind]:
            continue
        others = varying_keys([ev.condition.params() for ev in evs], skip=swept[kind])
        for ev in evs:
            params = ev.condition.params()
            grids[kind, ", ".join(f"{k}={params[k]}" for k in others)].append(ev)
    if not grids:
        return None
    rows = []
    for group in data.groups:
        for (kind, key), evs in grids.items():
            stats = [data.pooled.get((group, ev.condition_id)) for ev in evs]
            acc = [s.accuracy()[0] for s in stats if s is not None and s.acc]
            norm = [s.normalised()[0] for s in stats if s is not None and s.norm]
            if not acc:
                continue
            row = [group, kind, key, ", ".join(swept[kind]), f"{len(acc)}/{len(evs)}",
                   f"{100 * statistics.fmean(acc):.2f}"]  # fmt: skip
            if data.reference is not None:
                row.append(f"{100 * statistics.fmean(norm):.2f}" if norm else "")
            rows.append(row)
    header = ["training", "kind", "grid", "averaged over", "conditions", "mean accuracy (%)"]
    if data.reference is not None:
        header.append("mean normalised (% of clean)")
    return _Table(header, rows)


def _comparison_blocks(study: Study, rows: list[dict[str, Any]]) -> list[Any]:
    """The "Paired comparisons" section: per ``[[report.compare]]`` block, the paired
    difference B − A per condition with its 95 % interval, and its figure
    (:mod:`binsense.study.compare`)."""
    from binsense.study.compare import METHOD, report_sections

    blocks: list[Any] = [_Heading("Paired comparisons"), _Text(METHOD)]
    for section in report_sections(study, rows):
        blocks += [_Heading(section.title, 3), _Text(section.text)]
        if section.header:
            blocks.append(_Table(section.header, section.rows))
        if section.png is not None:
            blocks.append(_Figure(section.figure_name, section.title, section.png))
    return blocks


def _claim_blocks(study: Study, rows: list[dict[str, Any]]) -> list[Any]:
    """The "Claims" section: per ``[[report.claim]]`` block its verdict (holds / does not
    hold / inconclusive / not run) in one table, then each claim's conditions with their
    paired differences and 95 % intervals (:mod:`binsense.study.claims`)."""
    from binsense.study import claims

    results = claims.judge_study(study, rows)
    blocks: list[Any] = [
        _Heading("Claims"),
        _Text(
            "Each claim is judged condition by condition from the 95 % interval of its "
            "paired difference (accuracy points; mean over seeds, Student-t over the seed "
            "means): it holds where the interval lies on the expected side of the bound "
            "(inside it, for 'within'), does not hold where it lies on the other side, and "
            "is inconclusive otherwise. A claim holds if it holds at every condition and "
            "does not hold if it fails at any; intervals are per condition, uncorrected."
        ),
        _Table(claims.SUMMARY_HEADER, claims.summary_rows(results)),
    ]
    for result in results:
        blocks += [
            _Heading(result.name, 3),
            _Text(f"{result.quantity}; expected {result.expect} points: {result.verdict}."),
            _Table(claims.DETAIL_HEADER, claims.detail_rows(result)),
        ]
    return blocks


# ---------------------------------------------------------------- blocks


def _blocks(
    study: Study,
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    failures: Sequence[dict[str, Any]] = (),
) -> list[Any]:
    data = _Data(study, rows)
    expected = len(study.trainings) * study.draws_per_run
    preset = study.preset or "none"
    blocks: list[Any] = [_Heading(f"Study {study.name}", 1)]
    if study.description:
        blocks.append(_Text(study.description))
    blocks.extend(_Text(f"Note: {note}") for note in study.report.notes)
    status = "complete" if len(rows) == expected else f"partial: {len(rows)} of {expected} draws"
    if failures:
        status += f"; {len(failures)} grid point(s) FAILED (see Failures)"
    blocks.append(
        _Text(
            f"Preset: {preset}. {len(study.trainings)} training(s) x "
            f"{len(study.evaluations)} condition(s), {status}. Generated {utc_now()} by "
            f"binsense {binsense.__version__} (matplotlib {matplotlib.__version__}) from "
            f"{study.store_path}."
        )
    )

    blocks.append(_Heading("Trained models"))
    blocks.append(_Text(
        "Size: the trained (after pruning: the pruned) model as deployed, in Mbit (1 Mbit = "
        "2^20 bits; binsense summary); fully binary: every conv / linear MAC is binary."
    ))  # fmt: skip
    run_rows = {r["run_id"]: r for r in runs}
    table = []
    for t in (*study.trainings, *study.hidden):
        r = run_rows.get(t.run_id, {})
        acc = r.get("test_accuracy")
        seconds = r.get("train_seconds")
        size = r.get("size") if isinstance(r.get("size"), dict) else {}
        mbit, binary = size.get("mbit"), size.get("fully_binary")
        table.append([
            t.run_id, t.label(), t.config.dataset, t.config.model, r.get("epochs_done", 0),
            "" if acc is None else f"{100 * acc:.2f}",
            "" if mbit is None else f"{mbit:.4f}",
            "" if binary is None else ("yes" if binary else "no"),
            shown_status(study, t.run_id, r.get("status")),
            "" if seconds is None else f"{seconds:.0f}",
        ])  # fmt: skip
    blocks.append(_Table(
        ["run", "training", "data set", "model", "epochs", "test acc. (%)", "size (Mbit)",
         "fully binary", "status", "train time (s)"], table,
    ))  # fmt: skip

    figures: list[_Figure] = []
    for kind in dict.fromkeys(ev.kind for ev in study.evaluations):
        evs = [ev for ev in study.evaluations if ev.kind == kind]
        params = sweep_params(evs)
        chosen = study.report.sweep.get(kind)
        if chosen is not None:
            params = [p for p in params if p in chosen]
        figures += [_sweep_figure(data, kind, param) for param in params]
    extra = (_reference_bars(data), _heatmap(data), _size_figure(data, runs))
    figures += [f for f in extra if f is not None]
    if figures:
        blocks.append(_Heading("Figures"))
        blocks += figures

    blocks.append(_Heading("Summary (seeds pooled)"))
    blocks.append(_Text("Accuracy in %, mean ± std over every draw of every seed."))
    header = ["training", "condition", "accuracy (%)", "n"]
    if data.reference is not None:
        header.insert(3, "normalised (% of clean)")
    table = []
    for group in data.groups:
        for ev in study.evaluations:
            stats = data.pooled.get((group, ev.condition_id))
            if stats is None:
                continue
            row = [group, data.labels[ev.condition_id], _pct(stats.accuracy()), len(stats.acc)]
            if data.reference is not None:
                row.insert(3, _pct(stats.normalised()))
            table.append(row)
    blocks.append(_Table(header, table))

    averages = _averages_table(data)
    if averages is not None:
        blocks.append(_Heading("Averages over each noise grid"))
        blocks.append(_Text(
            "Mean over the conditions of one kind that share their non-numeric parameters "
            "(each condition weighted equally, e.g. S1's average normalised accuracy over "
            "its noise levels); the numeric parameters averaged over are listed."
        ))  # fmt: skip
        blocks.append(averages)

    if study.report.claim:
        blocks += _claim_blocks(study, rows)
    if study.report.compare:
        blocks += _comparison_blocks(study, rows)

    blocks.append(_Heading("Every run x condition"))
    table = []
    for t in study.trainings:
        for ev in study.evaluations:
            mean, std, n = data.run_stats(t.run_id, ev.condition_id)
            if n:
                table.append(
                    [
                        t.run_id,
                        t.label(),
                        data.labels[ev.condition_id],
                        _pct((mean, std)),
                        f"{n}/{ev.draws}",
                    ]
                )
    blocks.append(_Table(["run", "training", "condition", "accuracy (%)", "draws"], table))

    if failures:
        blocks.append(_Heading("Failures"))
        blocks.append(_Text(
            "Grid points that failed in the last run that reached them; the rest of the grid "
            "was run. The next binsense study run tries them again."
        ))  # fmt: skip
        label_of = {t.run_id: t.label() for t in study.trainings}
        table = [
            [
                f["run_id"], label_of.get(f["run_id"], ""),
                "training" if f["draw"] < 0
                else f"{data.labels.get(f['condition_id'], f['condition_id'])}, draw {f['draw']}",
                f["reason"], f["at"],
            ]
            for f in failures
        ]  # fmt: skip
        blocks.append(_Table(["run", "training", "failed", "reason", "when"], table))
    return blocks


def check_one_dataset_per_run(study: Study, rows: list[dict[str, Any]]) -> None:
    """Refuse rows of one run measured on different test data (never pooled)."""
    seen: dict[str, tuple[str, str]] = {}
    for r in rows:
        first = seen.setdefault(r["run_id"], (r["condition_id"], r["data_fingerprint"]))
        if r["data_fingerprint"] != first[1]:
            raise DataMismatchError(
                mismatch_message(r["run_id"], r["condition_id"], first[1], r["data_fingerprint"])
                + " (this store already mixes them: the report will not pool them)"
            )


# ---------------------------------------------------------------- rendering


def _figure_file(name: str) -> str:
    """A figure's file name: only letters, digits, ``._-`` (kinds and parameters are code)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") + ".png"


def render_markdown(blocks: list[Any]) -> str:
    """The report as Markdown; figures link to ``figures/<name>.png``.

    Every string is literal text: user strings (study name, description, labels) cannot
    create links, images, raw HTML or headings.
    """
    parts = []
    for b in blocks:
        if isinstance(b, _Heading):
            parts.append(f"{'#' * b.level} {md_inline(b.text)}\n")
        elif isinstance(b, _Text):
            parts.append(md_block(b.text) + "\n")
        elif isinstance(b, _Table):
            parts.append(markdown_table(b.header, b.rows) if b.rows else "(no rows yet)\n")
        else:
            parts.append(f"![{md_inline(b.title)}](figures/{_figure_file(b.name)})\n")
    return "\n".join(parts)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.5em 0; }
img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; }
"""


def render_html(blocks: list[Any], title: str) -> str:
    """The report as one HTML page (inline CSS, figures as base64 PNG, text escaped)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        if isinstance(b, _Heading):
            parts.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif isinstance(b, _Text):
            parts.append(f"<p>{esc(b.text)}</p>")
        elif isinstance(b, _Table):
            if not b.rows:
                parts.append("<p>(no rows yet)</p>")
                continue
            head = "".join(f"<th>{esc(str(h))}</th>" for h in b.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>" for row in b.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode(b.png).decode("ascii")
            parts.append(
                f'<figure><img alt="{esc(b.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(b.title)}</figcaption></figure>"
            )
    parts.append("</body></html>\n")
    return "\n".join(parts)


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by :func:`write_report`."""

    markdown: Path
    html: Path
    figures: tuple[Path, ...]


def write_report(study: Study, out_dir: str | os.PathLike | None = None) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` for ``study``.

    Args:
        study: a loaded study (:func:`~binsense.study.schema.load_study`).
        out_dir: report folder (default: ``<study folder>/report[-<preset>]``); give a
            writable one to report on a study in a read-only folder.

    Raises:
        BinsenseError: the store holds no result and no failure of this study's plan yet;
            the preset name cannot be a folder name; rows of one run are on different
            test data; the report folder cannot be written (the message says why).
    """
    out = Path(out_dir) if out_dir is not None else study.report_dir
    for t in study.trainings:
        study.run_dir(t.run_id)
    rows = study_rows(study)
    check_one_dataset_per_run(study, rows)
    with ResultStore(study.store_path, readonly=True) as store:
        runs = store.runs([t.run_id for t in (*study.trainings, *study.hidden)])
        failures = store.failures(
            [t.run_id for t in study.trainings], [e.condition_id for e in study.evaluations]
        )
    if not rows and not failures:
        raise BinsenseError(
            f"no results of study {study.name!r} in {str(study.store_path)!r} yet; "
            f"run `binsense study run {study.path}` first."
        )
    blocks = _blocks(study, rows, runs, failures)
    figures = []
    for b in blocks:
        if isinstance(b, _Figure):
            path = safe_child(out / "figures", _figure_file(b.name), what="figure name")
            atomic_write(path, lambda f, png=b.png: f.write(png))
            figures.append(path)
    md = atomic_write_text(out / "report.md", render_markdown(blocks))
    page = atomic_write_text(out / "report.html", render_html(blocks, f"Study {study.name}"))
    return ReportFiles(markdown=md, html=page, figures=tuple(figures))


def report_study(
    path: str | os.PathLike, preset: str | None = None, *, out: str | os.PathLike | None = None
) -> ReportFiles:
    """Load a study file and write its report (see :func:`write_report`)."""
    return write_report(load_study(path, preset, out=out))


__all__ = ["ReportFiles", "report_study", "write_report"]
