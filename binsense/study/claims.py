r"""Claims: a paper's statement checked against a study's store, with a verdict.

A reproduction is a list of claims ("4-bit BN is close to 32-bit BN", "column-FPN
training is robust across noise types"), each of which a reader wants marked *holds*,
*does not hold* or *inconclusive*, with the numbers behind the mark. A study file states
each claim once, as a ``[[report.claim]]`` block, and the report (and ``binsense study
claims``) judges it from the stored rows::

    [[report.claim]]
    name = "4-bit BN is close to 32-bit BN"
    paper = "Fig. 4: under 1 point lost at 4 bits"     # optional: what the paper reports
    b = { train_noise = "none" }      # the training group the claim is about
    relative_to = "clean"             # its change from its own clean accuracy
    where = { kind = "bn_bits", bits = 4 }               # the conditions it is judged on
    expect = "within 1"               # in accuracy points: "> X", "< X" or "within X"

**The quantity.** For each condition that ``where`` selects, a paired difference in
accuracy points, with the statistics of :mod:`binsense.study.compare` (mean over seeds
of each seed's mean over draws, 95 % Student-t interval over the seed means; over the
draws when there is one seed):

- with ``a``: B − A, the two training groups paired by seed; with ``relative_to`` too,
  B's change from that condition minus A's change (robustness);
- without ``a`` (``relative_to`` required): B's own change from ``relative_to``, i.e.
  the effect of the condition on B, :math:`a^{B}_{sk} - \bar a^{B,\mathrm{ref}}_s`.

``where`` maps ``kind`` or a condition parameter to a value or a list of values (any
of them); a condition lacking a named parameter is not selected, nor is the
``relative_to`` condition itself.

**The verdict** of one condition, from its interval :math:`[l, h]` (points):

- ``"> X"``: *holds* if :math:`l > X`, *does not hold* if :math:`h < X`;
- ``"< X"``: *holds* if :math:`h < X`, *does not hold* if :math:`l > X`;
- ``"within X"`` (:math:`|d| \le X`): *holds* if :math:`-X \le l` and :math:`h \le X`,
  *does not hold* if :math:`l > X` or :math:`h < -X`;
- otherwise, or with no interval (one seed and one draw), *inconclusive*.

"Within X" is an equivalence test read off the 95 % interval, stricter than the usual
two one-sided tests (which use the 90 % interval; Schuirmann, "A comparison of the two
one-sided tests procedure...", *J. Pharmacokinet. Biopharm.* 15, 1987). The claim's
verdict over its conditions: *holds* if it holds at every condition, *does not hold* if
it fails at any, else *inconclusive*; the counts are given with it. Each condition's
interval is a 95 % interval on its own: no correction for looking at several
conditions, which the counts make visible. A condition without stored rows is *not
run*; a claim with no condition run is *not run* (never a guess).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from binsense.study.claim_spec import (
    FAILS,
    HOLDS,
    NOT_RUN,
    UNSURE,
    Expectation,
    claim_pairs,
    selects,
)
from binsense.study.compare import (
    CONFIDENCE,
    CompareSource,
    ConditionInfo,
    PairedDifference,
    paired_difference,
    reference_condition,
    source_of_study,
)
from binsense.study.export import markdown_table
from binsense.study.selector import Arm

if TYPE_CHECKING:
    from binsense.study.schema import Study


def _conditions(
    spec: Any, conditions: Sequence[ConditionInfo], reference: ConditionInfo | None
) -> list[ConditionInfo]:
    return [c for c in conditions if c is not reference and selects(spec.where, c.kind, c.params)]


@dataclass(frozen=True)
class ClaimRow:
    """One condition of a claim: its paired difference (``None``: not run) and verdict."""

    condition: ConditionInfo
    difference: PairedDifference | None
    verdict: str


@dataclass(frozen=True)
class ClaimResult:
    """A judged claim: its spec's texts, the rows per condition and the overall verdict."""

    name: str
    paper: str
    quantity: str
    expect: Expectation
    rows: tuple[ClaimRow, ...]
    verdict: str

    def counts(self) -> str:
        """``"3 hold, 1 inconclusive of 4"``: the verdicts of the conditions."""
        tally: dict[str, int] = {}
        for r in self.rows:
            tally[r.verdict] = tally.get(r.verdict, 0) + 1
        order = (HOLDS, FAILS, UNSURE, NOT_RUN)
        parts = [f"{tally[v]} {v}" for v in order if v in tally]
        return f"{', '.join(parts)} (of {len(self.rows)})"


def _overall(verdicts: Sequence[str]) -> str:
    run = [v for v in verdicts if v != NOT_RUN]
    if not run:
        return NOT_RUN
    if FAILS in run:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else UNSURE


def _quantity(spec: Any, pairs: Sequence[tuple[Arm | None, Arm]]) -> str:
    b = pairs[0][1].group if pairs else "B"
    if spec.a is None:
        return f"{b}: accuracy change from its own {spec.relative_to!r} accuracy"
    a = pairs[0][0].group if pairs and pairs[0][0] is not None else "A"
    text = f"{b} minus {a}"
    if spec.relative_to is not None:
        text += f", each relative to its own {spec.relative_to!r} accuracy"
    return text


def judge(source: CompareSource, spec: Any, confidence: float = CONFIDENCE) -> ClaimResult:
    """Judge one ``[[report.claim]]`` block (a :class:`~binsense.study.schema.ClaimSpec`)
    against ``source``'s stored rows (module docstring)."""
    expect = Expectation.parse(spec.expect)
    pairs = claim_pairs(source.arms, spec)
    reference = None if spec.relative_to is None else reference_condition(source, spec.relative_to)
    index = {(r["run_id"], r["condition_id"], r["draw"]): r for r in source.rows}
    rows = []
    for c in _conditions(spec, source.conditions, reference):
        d = paired_difference(c, pairs, index, confidence, reference)
        verdict = NOT_RUN if d is None else expect.judge(100 * d.low, 100 * d.high)
        rows.append(ClaimRow(c, d, verdict))
    return ClaimResult(
        name=spec.name,
        paper=spec.paper or "",
        quantity=_quantity(spec, pairs),
        expect=expect,
        rows=tuple(rows),
        verdict=_overall([r.verdict for r in rows]),
    )


def judge_study(study: Study, rows: Sequence[Mapping[str, Any]] | None = None) -> list[ClaimResult]:
    """Every ``[[report.claim]]`` of ``study`` judged from its store (``rows``: the
    report's :func:`~binsense.study.export.study_rows`, read from the store if not
    given)."""
    source = source_of_study(study, rows)
    return [judge(source, spec) for spec in study.report.claim]


def _points(value: float) -> str:
    return "" if math.isnan(value) else f"{100 * value:+.2f}"


SUMMARY_HEADER = ["claim", "the paper", "quantity", "expected (points)", "verdict", "conditions"]
DETAIL_HEADER = ["condition", "seeds", "estimate (points)", "95 % interval", "over", "verdict"]


def summary_rows(results: Sequence[ClaimResult]) -> list[list[str]]:
    """One row per claim (:data:`SUMMARY_HEADER`)."""
    return [[r.name, r.paper, r.quantity, str(r.expect), r.verdict, r.counts()] for r in results]


def detail_rows(result: ClaimResult) -> list[list[str]]:
    """One row per condition of a claim (:data:`DETAIL_HEADER`)."""
    out = []
    for row in result.rows:
        d = row.difference
        if d is None:
            out.append([row.condition.label, "0", "", "", "", row.verdict])
            continue
        interval = "" if math.isnan(d.low) else f"[{_points(d.low)}, {_points(d.high)}]"
        out.append(
            [row.condition.label, str(d.seeds), _points(d.mean), interval, d.over, row.verdict]
        )
    return out


def format_claims(results: Sequence[ClaimResult]) -> str:
    """The claims as Markdown: the summary table, then each claim's conditions."""
    parts = [markdown_table(SUMMARY_HEADER, summary_rows(results))]
    for r in results:
        parts.append(f"\n{r.name}: {r.quantity}; expected {r.expect} points.\n")
        parts.append(markdown_table(DETAIL_HEADER, detail_rows(r)))
    return "\n".join(parts)


__all__ = [
    "DETAIL_HEADER",
    "SUMMARY_HEADER",
    "ClaimResult",
    "ClaimRow",
    "detail_rows",
    "format_claims",
    "judge",
    "judge_study",
    "summary_rows",
]
