"""``[[report.claim]]``: a paper's claims judged from a store, on stores written here.

The store is filled by ``test_study_compare._fill`` with known accuracies: B = A + 5
points (+ -1 / 0 / +1 per seed) under sensor noise and B = A on clean images; A's
accuracy changes by exactly -1.9 points (mean over draws) from clean to the first
sensor-noise level. So every interval below is known in advance.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_study_compare import _fill, _write

from binsense.cli import main
from binsense.study.claim_spec import FAILS, HOLDS, NOT_RUN, UNSURE, Expectation
from binsense.study.claims import judge_study
from binsense.study.report import write_report
from binsense.study.schema import StudyFileError, load_study
from binsense.study.store import ResultStore

HALF = 4.302652730 / math.sqrt(3)  # t_{0.975,2} * sd(4, 5, 6) / sqrt(3), points

CLAIMS = """
[report]
notes = ["CIFAR-100 is not on this machine: <not run>."]

[[report.claim]]
name = "B beats A under FPN"
paper = "+5 points"
a = {{ variant = "A" }}
b = {{ variant = "B" }}
where = {{ kind = "sensor_noise" }}
expect = "{expect}"

[[report.claim]]
name = "B equals A on clean images"
a = {{ variant = "A" }}
b = {{ variant = "B" }}
where = {{ kind = "clean" }}
expect = "within 0.5"

[[report.claim]]
name = "FPN at 5 % costs A about 2 points"
b = {{ variant = "A" }}
relative_to = "clean"
where = {{ kind = "sensor_noise", level = 0.05 }}
expect = "{effect}"
"""


def _study(tmp_path: Path, expect: str = "> 0", effect: str = "< -1", fill: bool = True):
    path = _write(tmp_path, report=CLAIMS.format(expect=expect, effect=effect))
    study = load_study(path)
    if fill:
        _fill(study)
    return path, study


@pytest.mark.parametrize(
    ("expect", "verdict"),
    [("> 0", HOLDS), ("> 2.5", HOLDS), ("> 5", UNSURE), ("> 7.5", FAILS), ("< 0", FAILS),
     ("< 7.5", HOLDS), ("within 8", HOLDS), ("within 5", UNSURE), ("within 2", FAILS)],
)  # fmt: skip
def test_verdicts_follow_the_interval(tmp_path: Path, expect: str, verdict: str):
    """B − A: 5 ± 2.484 points at both levels, i.e. [2.516, 7.484]."""
    _, study = _study(tmp_path, expect=expect)
    result = judge_study(study)[0]
    assert [r.condition.label for r in result.rows] == [
        "sensor_noise level=0.05",
        "sensor_noise level=0.1",
    ]
    for row in result.rows:
        d = row.difference
        assert (100 * d.mean, 100 * d.low, 100 * d.high) == pytest.approx(
            (5, 5 - HALF, 5 + HALF), abs=1e-9
        )
        assert d.seeds == 3 and row.verdict == verdict
    assert result.verdict == verdict


def test_a_condition_effect_within_one_group(tmp_path: Path):
    """Without ``a``: A's own change from clean, exactly -1.9 points for every seed."""
    _, study = _study(tmp_path)
    clean, effect = judge_study(study)[1:]
    assert clean.verdict == HOLDS and 100 * clean.rows[0].difference.high == 0.0
    (row,) = effect.rows
    assert 100 * row.difference.mean == pytest.approx(-1.9)
    assert row.difference.low == row.difference.high  # identical seeds: zero width
    assert effect.verdict == HOLDS and "own 'clean' accuracy" in effect.quantity
    (tmp_path / "b").mkdir()
    _, study = _study(tmp_path / "b", effect="within 1")
    assert judge_study(study)[2].verdict == FAILS  # -1.9 lies outside [-1, 1]


def test_overall_verdict_fails_if_any_condition_fails(tmp_path: Path):
    """The same shift at both levels; a bound between them is not possible, so the
    overall rule is checked on a mix: holds + inconclusive is inconclusive, any
    failure is a failure."""
    from binsense.study import claims

    assert claims._overall([HOLDS, HOLDS]) == HOLDS
    assert claims._overall([HOLDS, UNSURE]) == UNSURE
    assert claims._overall([HOLDS, FAILS, UNSURE]) == FAILS
    assert claims._overall([HOLDS, NOT_RUN]) == UNSURE
    assert claims._overall([NOT_RUN, NOT_RUN]) == NOT_RUN


def test_a_store_without_rows_is_not_run(tmp_path: Path):
    _, study = _study(tmp_path, fill=False)
    with ResultStore(study.store_path):  # an empty store: the study was never run
        pass
    results = judge_study(study)
    assert [r.verdict for r in results] == [NOT_RUN] * 3
    assert results[0].counts() == "2 not run (of 2)"


@pytest.mark.parametrize(
    ("text", "ok"),
    [("> 0", True), ("<-10", True), ("within 1.5", True), ("within 0", False),
     (">= 1", False), ("> x", False), ("1", False)],
)  # fmt: skip
def test_expectation_parse(text: str, ok: bool):
    if ok:
        assert Expectation.parse(text).x == float(text.split()[-1].lstrip("<>"))
    else:
        with pytest.raises(ValueError, match="expect"):
            Expectation.parse(text)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ('[[report.claim]]\nname = "x"\nb = { variant = "B" }\nwhere = { kind = "clean" }\n'
         'relative_to = "clean"\nexpect = ">= 1"\n', "expect must be '> X', '< X' or 'within X'"),
        ('[[report.claim]]\nname = "x"\nb = { variant = "B" }\nwhere = { kind = "clean" }\n'
         'expect = "> 1"\n', "#1 has no 'a', so it is about one training group's change"),
        ('[[report.claim]]\nname = "x"\nb = { variant = "B" }\nwhere = { kind = "clean" }\n'
         'relative_to = "clean"\nexpect = "> 1"\n', r"#1 \(x\) where .* selects no condition"),
        ('[[report.claim]]\nname = "x"\nb = { variant = "B" }\nwhere = { level = 0.2 }\n'
         'relative_to = "clean"\nexpect = "> 1"\n', r"selects no condition.*kinds: clean, "),
        ('[[report.claim]]\nname = "x"\nb = { variant = "B" }\nwhere = { kind = "clean" }\n'
         'relative_to = "clear"\nexpect = "> 1"\n', "relative_to 'clear' is no condition's"),
        ('[[report.claim]]\nname = "x"\nb = { variant = "BB" }\nwhere = { kind = "clean" }\n'
         'relative_to = "clean"\nexpect = "> 1"\n', r"#1 \(x\) b variant=BB matches no"),
        ('[[report.claim]]\nname = "x"\nb = { seed = 0 }\nwhere = { kind = "clean" }\n'
         'relative_to = "clean"\nexpect = "> 1"\n', "matches 3 training groups .* not one"),
        ('[[report.claim]]\nname = "x"\nb = { variant = "B" }\nwher = { kind = "clean" }\n'
         'expect = "> 1"\n', "unknown key 'wher' — did you mean 'where'"),
        ('[[report.claim]]\nname = "x"\nb = { variant = "B" }\nexpect = "> 1"\n',
         "#1 needs 'where', a non-empty table"),
    ],
)  # fmt: skip
def test_claim_blocks_are_checked_when_the_file_loads(tmp_path: Path, block, message):
    path = _write(tmp_path, report=block)
    with pytest.raises(StudyFileError, match=message) as info:
        load_study(path)
    assert "\n" not in str(info.value)


def test_report_and_cli_show_the_claims(tmp_path: Path, capsys):
    path, study = _study(tmp_path, expect="> 7.5")
    md = write_report(study, tmp_path / "report").markdown.read_text()
    assert "## Claims" in md and "### B beats A under FPN" in md
    assert "Note: CIFAR-100 is not on this machine: &lt;not run&gt;." in md  # as literal text
    summary = "| B beats A under FPN | +5 points | variant=B minus variant=A | &gt; 7.5 |"
    assert f"{summary} does not hold | 2 does not hold (of 2) |" in md  # Markdown-escaped
    assert "| sensor_noise level=0.1 | 3 | +5.00 | \\[+2.52, +7.48\\] | seeds | does not" in md
    assert main(["study", "claims", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| FPN at 5 % costs A about 2 points |" in out and "| holds |" in out


def test_cli_without_claims_is_one_line(tmp_path: Path, capsys):
    path = _write(tmp_path)
    assert main(["study", "claims", str(path)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "states no claims" in err


def test_the_full_presets_state_the_papers_claims():
    """S0's four claims (the third for each noise-aware model) and S2's claim (per
    kernel) with Q1 and Q2: checked against the plans when the files load; the smaller
    presets state none (their grids differ)."""
    repo = Path(__file__).resolve().parents[1] / "studies"
    s0 = load_study(repo / "s0_fpn_bn.toml", "full")
    s2 = load_study(repo / "s2_design.toml", "full")
    assert [c.name[:2] for c in s0.report.claim] == ["1.", "2.", "3a", "3b", "3c", "3d", "4."]
    assert len(s2.report.claim) == 5
    assert not load_study(repo / "s0_fpn_bn.toml", "cpu").report.claim
    assert all("CIFAR-100" in s.report.notes[0] for s in (s0, s2))  # what was not run


def test_a_partial_reports_figures_name_the_seeds_with_rows(tmp_path: Path):
    """Figure subtitles count the seeds that have rows, and say when that is fewer than
    the plan's."""
    from binsense.study.export import study_rows
    from binsense.study.report import _Data, _subtitle

    _, study = _study(tmp_path)
    rows = study_rows(study)
    assert _subtitle(_Data(study, rows)).endswith("3 seed(s)")
    seed0 = {t.run_id for t in study.trainings if t.config.seed == 0}
    partial = [r for r in rows if r["run_id"] in seed0]
    assert _subtitle(_Data(study, partial)).endswith("1 of 3 seeds (partial)")
