"""``binsense study compare`` and the report's paired comparisons, on stores written here.

The study files below name an image folder that is never read: the store is filled with
rows constructed by the test (known accuracies per seed, condition and draw), so the
paired differences and their intervals are known exactly.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from binsense.cli import main
from binsense.errors import BinsenseError
from binsense.study.compare import (
    compare,
    format_comparison,
    load_source,
    parse_selector,
    t_interval,
    t_quantile,
)
from binsense.study.report import write_report
from binsense.study.schema import Study, StudyFileError, load_study
from binsense.study.store import ResultStore

REPO = Path(__file__).resolve().parents[1]

STUDY = """\
[study]
name = "cmp"

[train]
dataset = "imagefolder:{data}"
model = "mnist_bnn"
model_options = {{ width = 0.125 }}
epochs = 1

[train.grid]
seed = {seeds}
variant = [
    {{ name = "A", lr = 0.001 }},
    {{ name = "A again", lr = 0.0011 }},
    {{ name = "B", lr = 0.002 }},
]

[[condition]]
kind = "clean"

[[condition]]
kind = "sensor_noise"
type = "column_offset"
level = [0.05, 0.1]
draws = 3
{report}"""

#: B − A per seed (mean exactly 0.05 over the three seeds) on the sensor-noise conditions.
SHIFT = 0.05
SEED_OFFSET = {0: -0.01, 1: 0.0, 2: 0.01}


def _base(seed: int, cid_index: int, draw: int) -> float:
    """A's accuracy: varies with seed, condition and draw, so only pairing removes it."""
    return 0.5 + 0.07 * seed - 0.03 * cid_index + 0.011 * draw


def _write(tmp_path: Path, seeds: str = "[0, 1, 2]", report: str = "") -> Path:
    path = tmp_path / "cmp.toml"
    path.write_text(STUDY.format(data=tmp_path / "images", seeds=seeds, report=report))
    return path


def _fill(study: Study, fingerprint_b: str = "fp") -> None:
    """Rows for every training, condition and draw: "A again" = A exactly; B = A + the
    shift (+ a per-seed offset) under sensor noise, = A on clean images."""
    with ResultStore(study.store_path) as store:
        for t in study.trainings:
            config = t.config.model_dump(mode="json")
            store.start_run(t.run_id, config, t.run_id)
            store.finish_run(
                t.run_id, metrics=[], fingerprints={}, environment={}, train_seconds=1.0
            )
            variant = t.grid["variant"]
            for i, ev in enumerate(study.evaluations):
                for draw in range(ev.draws):
                    acc = _base(t.config.seed, i, draw)
                    if variant == "B" and ev.kind == "sensor_noise":
                        acc += SHIFT + SEED_OFFSET[t.config.seed]
                    store.add_result({
                        "run_id": t.run_id, "condition_id": ev.condition_id, "draw": draw,
                        "kind": ev.kind, "params": ev.condition.params(), "label": ev.label(),
                        "accuracy": acc, "loss": 1.0, "n": 100,
                        "data_fingerprint": fingerprint_b if variant == "B" else "fp",
                        "versions": {}, "device": "cpu", "started": "t", "finished": "t",
                        "seconds": 0.1,
                    })  # fmt: skip


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    path = _write(tmp_path)
    _fill(load_study(path))
    return path


def test_t_quantile_matches_tables():
    """Two-sided critical values of Student's t (scipy.stats.t.ppf(0.975, df), 10 digits)."""
    for df, value in [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105),
                      (10, 2.228138852), (30, 2.042272456), (1000, 1.962339081)]:  # fmt: skip
        assert t_quantile(0.95, df) == pytest.approx(value, abs=1e-9)
    assert t_quantile(0.99, 5) == pytest.approx(4.032142984, abs=1e-9)
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert (mean, low, high) == pytest.approx((2.0, 2 - 4.30265273 / math.sqrt(3),
                                               2 + 4.30265273 / math.sqrt(3)))  # fmt: skip
    assert math.isnan(t_interval([1.0])[1])


def test_identical_trainings_differ_by_exactly_zero(filled: Path):
    result = compare(load_source(filled), {"variant": "A"}, {"variant": "A again"})
    assert len(result.pairs) == 3 and not result.unpaired
    assert [d.condition.kind for d in result.rows] == ["clean", "sensor_noise", "sensor_noise"]
    for d in result.rows:
        assert (d.mean, d.low, d.high) == (0.0, 0.0, 0.0)
        assert d.over == "seeds" and d.seeds == 3 and d.excludes_zero is False
    assert [d.pairs for d in result.rows] == [3, 9, 9]


def test_a_known_shift_is_recovered(filled: Path):
    result = compare(load_source(filled), {"variant": "A"}, {"variant": "B"}, name="B vs A")
    clean, *noisy = result.rows
    assert (clean.mean, clean.low, clean.high) == (0.0, 0.0, 0.0)
    half = t_quantile(0.95, 2) * 0.01 / math.sqrt(3)  # sd of the seed offsets = 0.01
    for d in noisy:
        assert d.mean == pytest.approx(SHIFT, abs=1e-12)
        assert d.low == pytest.approx(SHIFT - half, abs=1e-12)
        assert d.high == pytest.approx(SHIFT + half, abs=1e-12)
        assert d.mean_b - d.mean_a == pytest.approx(SHIFT, abs=1e-12)
        assert d.excludes_zero is True
    rows = list(csv.DictReader(io.StringIO(format_comparison(result, "csv"))))
    assert [float(r["diff_points"]) for r in rows] == pytest.approx([0.0, 5.0, 5.0])
    assert float(rows[1]["ci_low_points"]) == pytest.approx(100 * (SHIFT - half))
    assert rows[1]["ci_over"] == "seeds" and rows[1]["a"] == "variant=A"
    table = format_comparison(result, "table")
    assert "+5.00" in table and "Student-t" in table
    md = format_comparison(result, "md")
    assert "| sensor_noise level=0.05 | 9 | 3 |" in md


def test_relative_to_compares_the_changes_from_a_reference(filled: Path):
    """B = A + shift under both noise levels and = A on clean images: relative to the
    0.05 level, B's change is the shift smaller on clean images and the same at 0.1."""
    source = load_source(filled)
    result = compare(source, {"variant": "A"}, {"variant": "B"},
                     relative_to="sensor_noise level=0.05")  # fmt: skip
    clean, noisy = result.rows  # the reference itself is not listed
    assert clean.condition.kind == "clean" and noisy.condition.label.endswith("0.1")
    half = t_quantile(0.95, 2) * 0.01 / math.sqrt(3)
    assert clean.mean == pytest.approx(-SHIFT, abs=1e-12)
    assert (clean.low, clean.high) == pytest.approx((-SHIFT - half, -SHIFT + half), abs=1e-12)
    assert (noisy.mean, noisy.low, noisy.high) == pytest.approx((0, 0, 0), abs=1e-12)
    # A's change from the reference: clean (condition 0) minus the mean over 3 draws of
    # the 0.05 level (condition 1), averaged over seeds
    expected_a = _base(0, 0, 0) - sum(_base(0, 1, d) for d in range(3)) / 3
    assert clean.mean_a == pytest.approx(expected_a, abs=1e-12)
    table = format_comparison(result, "table")
    assert "A change from sensor_noise level=0.05 (points)" in table and "robustness" in table
    rows = list(csv.DictReader(io.StringIO(format_comparison(result, "csv"))))
    assert rows[0]["relative_to"] == "sensor_noise level=0.05"
    assert float(rows[0]["diff_points"]) == pytest.approx(-100 * SHIFT)  # a plain number
    with pytest.raises(BinsenseError, match="no condition is labelled 'cleen'.*'clean'"):
        compare(source, {"variant": "A"}, {"variant": "B"}, relative_to="cleen")


def test_one_seed_gives_an_interval_over_its_draws(tmp_path: Path):
    path = _write(tmp_path, seeds="[1]")
    _fill(load_study(path))
    result = compare(load_source(path), {"variant": "A"}, {"variant": "B"})
    clean, noisy, _ = result.rows
    assert clean.over == "" and math.isnan(clean.low)  # one seed, one draw: no interval
    assert noisy.over == "draws of one seed" and noisy.low == noisy.high == noisy.mean
    assert noisy.mean == pytest.approx(SHIFT)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ({"variant": "C"}, {"variant": "B"},
         r"^--a variant=C matches no training; variant is one of: 'A', 'B', 'A again'\.$"),
        ({"varient": "A"}, {"variant": "B"},
         r"^--a varient=A: unknown key 'varient' — did you mean 'variant'\?; selector keys "
         r"are the training-grid keys \(seed, variant\)"),
        ({"seed": 1}, {"variant": "B"},
         r"^--a seed=1 matches 3 training groups \(variant=A; variant=A again; variant=B\), "
         r"not one; add variant=\.\.\. \(variant is one of: 'A', 'B', 'A again'\)\.$"),
        ({"variant": "A"}, {"variant": "A"}, r"pick the same training group"),
        ({"variant": "A"}, {"seed": 1}, r"pick the same training group \(variant=A\)"),
        ({"variant": "A", "seed": 0}, {"variant": "B", "seed": 1}, r"share no seed"),
    ],
)  # fmt: skip
def test_selector_mistakes_are_one_line(filled: Path, a, b, message):
    with pytest.raises(BinsenseError, match=message) as info:
        compare(load_source(filled), a, b)
    assert "\n" not in str(info.value)


def test_config_fields_select_and_unpaired_trainings_are_listed(filled: Path):
    """A TrainConfig field works as a key; trainings without a partner are listed."""
    result = compare(load_source(filled), {"variant": "A", "seed": 2}, {"lr": 0.002})
    assert result.b == "variant=B" and [a.seed for a, _ in result.pairs] == [2]
    assert sorted(a.seed for a in result.unpaired) == [0, 1]
    assert "without a partner (left out): variant=B seed 0; variant=B seed 1" in (result.describe())


def test_b_inherits_the_keys_of_a_it_does_not_name(tmp_path: Path):
    """``--b variant=B`` picks two groups (epochs 1 and 2): A's ``epochs=1`` decides."""
    path = _write(tmp_path, seeds="[0, 1, 2]\nepochs = [1, 2]")
    _fill(load_study(path))
    source = load_source(path)
    result = compare(source, {"variant": "A", "epochs": 1}, {"variant": "B"})
    assert result.a == "epochs=1, variant=A" and result.b == "epochs=1, variant=B"
    assert len(result.pairs) == 3
    with pytest.raises(BinsenseError, match=r"^--a variant=A matches 2 training groups .* "
                       r"add epochs=\.\.\. \(epochs is one of: '1', '2'\)"):  # fmt: skip
        compare(source, {"variant": "A"}, {"variant": "B"})


def test_parse_selector():
    assert parse_selector("variant=GLT-8,seed=0") == {"variant": "GLT-8", "seed": 0}
    assert parse_selector('train_noise={type = "pixel_offset", level = 0.05},lr=1e-3') == {
        "train_noise": {"type": "pixel_offset", "level": 0.05},
        "lr": 0.001,
    }
    assert parse_selector("model_options.design=none") == {"model_options.design": "none"}
    for bad in ("variant", "=x", "a=1,a=2", " , "):
        with pytest.raises(BinsenseError, match=r"^--a "):
            parse_selector(bad)


def test_rows_on_different_images_are_not_paired(tmp_path: Path):
    path = _write(tmp_path)
    _fill(load_study(path), fingerprint_b="other")
    with pytest.raises(BinsenseError, match="different test images"):
        compare(load_source(path), {"variant": "A"}, {"variant": "B"})


def test_cli_prints_the_table_csv_and_figure(filled: Path, tmp_path: Path, capsys):
    figure = tmp_path / "fig" / "cmp.png"
    args = ["study", "compare", str(filled), "--a", "variant=A", "--b", "variant=B"]
    assert main([*args, "--plot", str(figure)]) == 0
    out = capsys.readouterr()
    assert "B = variant=B minus A = variant=A, paired on seed (0, 1, 2)" in out.out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the study folder instead of the file: the file next to it is read
    assert main(["study", "compare", str(filled.with_suffix("")), "--a", "variant=A",
                 "--b", "variant=B", "--format", "csv"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("condition,condition_id,kind,params,pairs")


def test_cli_mistake_is_one_line_and_nonzero(filled: Path, capsys):
    code = main(["study", "compare", str(filled), "--a", "variant=AA", "--b", "variant=B"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: --a variant=AA matches no training")
    assert "did you mean 'A'" in err


REPORT = """
[[report.compare]]
name = "B vs A <b>"
a = {{ variant = "A" }}
b = {{ {b} }}
"""


def test_report_has_a_paired_comparisons_section(tmp_path: Path):
    path = _write(tmp_path, report=REPORT.format(b='variant = "B"'))
    study = load_study(path)
    _fill(study)
    files = write_report(study, tmp_path / "report")
    md = files.markdown.read_text()
    assert "## Paired comparisons" in md and "### B vs A &lt;b&gt;" in md
    assert "| sensor_noise level=0.1 | 9 | 3 |" in md and "+5.00" in md
    assert any(p.name.startswith("compare_1_b_vs_a_b") for p in files.figures)
    assert "<h3>B vs A &lt;b&gt;</h3>" in files.html.read_text()


def test_report_compare_relative_to_a_condition(tmp_path: Path):
    path = _write(tmp_path, report=REPORT.format(b='variant = "B" }\nrelative_to = "clean"\n#'))
    study = load_study(path)
    _fill(study)
    md = write_report(study, tmp_path / "report").markdown.read_text()
    assert "A change from clean (points)" in md and "| sensor_noise level=0.1 | 9 | 3 |" in md


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ('[[report.compare]]\naa = { variant = "A" }\nb = { variant = "B" }\n',
         r"\[report\] 'compare': \[\[report.compare\]\] #1 unknown key 'aa' — did you mean 'a'\?"),
        ('[[report.compare]]\nb = { variant = "B" }\n', r"#1 needs 'a', a non-empty table"),
        (REPORT.format(b='varient = "B"'),
         r"\[report\] \[\[report.compare\]\] #1 b varient=B: unknown key 'varient' — did "
         r"you mean 'variant'\?"),
        (REPORT.format(b='variant = "BB"'),
         r"#1 b variant=BB matches no training — did you mean 'B'\?"),
        (REPORT.format(b='variant = "B" }\nrelative_to = "cleen"\n#'),
         r"#1 relative_to 'cleen' is no condition's label; the labels: 'clean'"),
    ],
)  # fmt: skip
def test_report_compare_blocks_are_validated(tmp_path: Path, block, message):
    path = _write(tmp_path, report=block)
    with pytest.raises(StudyFileError, match=message) as info:
        load_study(path)
    assert "\n" not in str(info.value)


def test_cross_studies_declare_their_comparisons():
    """The cross-study files: their [[report.compare]] blocks pick one group per side
    (checked at load, in every preset: tests/test_study.py loads them all), over 3 seeds;
    Q5's preset reuses the trainings of Q1's (same run ids, so they are not trained again)."""
    design = REPO / "studies" / "x_design_fpn.toml"
    cpu, q5 = load_study(design, "cpu"), load_study(design, "q5_cpu")
    assert {t.run_id for t in cpu.trainings} == {t.run_id for t in q5.trainings}
    assert {e.kind for e in q5.evaluations} == {"clean", "weight_noise", "sensor_noise"}
    encoders = load_study(REPO / "studies" / "x_encoder_fpn.toml", "cpu")
    for study, count in ((cpu, 11), (encoders, 8)):
        assert len(study.report.compare) == count
        assert {t.config.seed for t in study.trainings} == {0, 1, 2}
