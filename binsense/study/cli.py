"""``binsense study ...``: the study commands, added to the main parser.

Each handler takes the parsed arguments, calls the library and returns an exit code;
user mistakes raise :class:`~binsense.errors.BinsenseError`, which the main CLI prints as
one line. ``study run`` exits with status 1 when some grid points failed (the rest of
the study ran; the report lists them). ``results``, ``report`` and ``show`` only read the
store (read-only), so they work on a study in a read-only folder (``report`` then needs
``--report-dir``). Library modules are imported inside the handlers, so that building the
parser (every ``binsense`` command does) does not import torch.

The pre-flight checks are the library's (:mod:`binsense.study.preflight`): ``run_study``
makes them itself, and the reading commands check the study folder, its store and their
own output paths after loading the study, before they read or write anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from binsense.study.export import FORMATS

if TYPE_CHECKING:  # pragma: no cover
    from binsense.study.schema import Study


def _load(args: argparse.Namespace) -> Study:
    """The study of ``args`` (file, preset, --out), after the checks of a command that
    reads it (:func:`~binsense.study.preflight.check_study_folder`)."""
    from binsense.study.preflight import check_study_folder
    from binsense.study.schema import load_study

    study = load_study(args.file, args.preset, out=args.out)
    check_study_folder(study)
    return study


def cmd_run(args: argparse.Namespace) -> int:
    """Run the study, write its report; exit status 1 if any grid point failed."""
    from binsense.study.runner import run_study

    summary = run_study(  # (it makes the pre-flight checks itself)
        args.file, args.preset, data_dir=args.data_dir, out=args.out,
        progress=False if args.no_progress else None, executor=args.executor,
        address=args.address, reuse=args.reuse or (),
    )  # fmt: skip
    print(summary.line())
    status = _report(summary.study, None)
    if summary.failures:
        first = summary.failures[0].line().rstrip(".")
        more = f" (and {summary.failed - 1} more)" if summary.failed > 1 else ""
        print(
            f"error: {summary.failed} grid point(s) failed, the rest of the study ran: "
            f"{first}{more}; the report lists them, `binsense study run` tries them again.",
            file=sys.stderr,
        )
        return 1
    return status


def cmd_results(args: argparse.Namespace) -> int:
    from binsense.io import atomic_write_text, check_output_file
    from binsense.study.export import format_rows, study_rows

    study = _load(args)
    if args.output:
        check_output_file(Path(args.output), "-o/--output")
    text = format_rows(study_rows(study), args.format)
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from binsense.io import check_out_dir

    study = _load(args)
    if args.report_dir:
        check_out_dir(Path(args.report_dir), "--report-dir")
    return _report(study, args.report_dir)


def _report(study: Study, chosen: str | None) -> int:
    """Write the study's report (into ``chosen``, else its own folder) and say where."""
    from binsense.errors import BinsenseError
    from binsense.io import WriteError
    from binsense.study.report import write_report

    try:
        files = write_report(study, chosen)
    except WriteError as e:
        if chosen is not None:
            raise
        raise BinsenseError(
            f"{str(e).rstrip('.')}; to report on a study in a read-only folder, pass "
            "--report-dir DIR (a writable folder)."
        ) from None
    print(f"report: {files.markdown}, {files.html} ({len(files.figures)} figures)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from binsense.study.plan import shown_status
    from binsense.study.runner import study_progress

    study = _load(args)
    progress = study_progress(study)
    per_run = study.draws_per_run
    total = len(study.trainings) * (1 + per_run) + len(study.hidden)
    hidden: dict[str, str | None] = {}
    if study.hidden and study.store_path.is_file():
        from binsense.study.store import ResultStore

        with ResultStore(study.store_path, readonly=True) as store:
            hidden = {t.run_id: store.run_status(t.run_id) for t in study.hidden}
    done = sum((p.status == "trained") + p.draws_done for p in progress)
    done += sum(status == "trained" for status in hidden.values())
    preset = f" (preset {study.preset})" if study.preset else ""
    print(f"study {study.name}{preset}: {study.path}")
    if study.description:
        print(f"  {study.description}")
    print(f"  folder {study.out_dir}, store {study.store_path.name}")
    print(
        f"  {len(study.trainings)} training(s) x {len(study.evaluations)} condition(s) "
        f"({per_run} draws per model) = {total} steps; done {done}/{total}"
    )
    print("trainings:")
    width = max((len(p.training.label()) for p in progress), default=0)
    for p in progress:
        c = p.training.config
        print(
            f"  {p.training.run_id}  {p.training.label():<{width}}  {c.model} on {c.dataset}, "
            f"{c.epochs} epoch(s)  {shown_status(study, p.training.run_id, p.status)}, "
            f"{p.draws_done}/{p.draws_total} draws"
        )
        for reason in p.failures:
            print(f"      failed: {reason}")
    if study.hidden:
        print("teachers and starts (trained first, not evaluated):")
        for t in study.hidden:
            c = t.config
            status = shown_status(study, t.run_id, hidden.get(t.run_id))
            print(
                f"  {t.run_id}  {t.label()}: {c.model} on {c.dataset}, {c.epochs} epoch(s)  "
                f"{status}"
            )
    print("conditions:")
    for ev in study.evaluations:
        print(f"  {ev.condition_id}  {ev.label()}  {ev.draws} draw(s)")
    return 0


class _StudyOrFolder(argparse.Action):
    """``STUDY``: a study file, or the folder a study ran into — then the file next to it
    (``studies/x/`` -> ``studies/x.toml``) with ``--out`` that folder (unless given), so
    the pre-flight checks and the handler read the same study as ``study report``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        path = Path(str(values))
        if path.is_dir():
            if getattr(namespace, "out", None) is None:
                namespace.out = str(path)
            path = path.with_suffix(".toml")  # missing: load_study names the file it wanted
        setattr(namespace, self.dest, str(path))


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the paired difference B − A per condition; optionally write its figure."""
    from binsense.io import atomic_write_text
    from binsense.study.compare import (
        compare,
        format_comparison,
        parse_selector,
        source_of_study,
        write_figure,
    )

    study = _load(args)  # (a study folder was turned into its file by _StudyOrFolder)
    a, b = parse_selector(args.a, "--a"), parse_selector(args.b, "--b")
    source = source_of_study(study)
    comparison = compare(source, a, b, relative_to=args.relative_to)
    text = format_comparison(comparison, args.format)
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    if args.plot:
        print(f"figure: {write_figure(comparison, args.plot)}", file=sys.stderr)
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    """Print the study file's claims ([[report.claim]]) with their verdicts."""
    from binsense.errors import BinsenseError
    from binsense.io import atomic_write_text
    from binsense.study.claims import format_claims, judge_study

    study = _load(args)
    if not study.report.claim:
        raise BinsenseError(
            f"{args.file} (preset {study.preset or 'none'}) states no claims: add "
            "[[report.claim]] blocks (see binsense.study.claims), or use `study compare`."
        )
    text = format_claims(judge_study(study))
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="study file (TOML)")
    p.add_argument("--preset", help="preset of the file (default: its study.default_preset)")
    p.add_argument("--out", help="study folder (default: next to FILE, named after it)")


def add_study_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``study run|results|report|show|compare|claims`` to the main CLI's sub-commands."""
    p = subparsers.add_parser(
        "study",
        help="run a study: train a grid of models, evaluate them under conditions, report",
        description="Studies: a TOML file with a grid of trainings and of evaluation "
        "conditions. `run` skips what is done and resumes after an interruption.",
    )
    sub = p.add_subparsers(dest="study_command", required=True, metavar="ACTION")

    q = sub.add_parser("run", help="train and evaluate what is not done yet")
    _common(q)
    q.add_argument("--data-dir", help="data-set folder (default: $BINSENSE_DATA)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="where trainings and evaluations run: local (default) or ray (a local Ray with "
        "this machine's cores, or the cluster at --address); overrides [executor] kind",
    )
    q.add_argument(
        "--address", help="Ray cluster address: auto (the one `ray start` made) or HOST:PORT"
    )
    q.add_argument(
        "--reuse",
        action="append",
        metavar="DIR",
        help="another study's folder: its finished trainings with the same run id (the "
        "same config) are copied in instead of trained again (repeatable)",
    )
    q.set_defaults(func=cmd_run)

    q = sub.add_parser("results", help="export the results table")
    _common(q)
    q.add_argument("--format", choices=FORMATS, default="csv", help="output format (csv)")
    q.add_argument("-o", "--output", help="write to this file instead of stdout")
    q.set_defaults(func=cmd_results)

    q = sub.add_parser("report", help="write the Markdown/HTML report with figures")
    _common(q)
    q.add_argument(
        "--report-dir",
        metavar="DIR",
        help="write the report here (default: report[-PRESET]/ in the study folder; use it "
        "when the study folder is read-only)",
    )
    q.set_defaults(func=cmd_report)

    q = sub.add_parser("show", help="print the expanded plan and what is done")
    _common(q)
    q.set_defaults(func=cmd_show)

    q = sub.add_parser(
        "compare",
        help="paired difference B - A of two training groups, per condition, with 95 %% CIs",
        description="Pairs the trainings of A and B by seed and every condition's draws by "
        "index (same images, sensor instances, noise draws); prints B - A per condition "
        "with a 95 % Student-t interval over seeds. Selectors: KEY=VALUE[,KEY=VALUE] with "
        "training-grid keys (variant=GLT-8) or TrainConfig fields (model_options.design=2x2).",
    )
    q.add_argument(
        "file",
        metavar="STUDY",
        action=_StudyOrFolder,
        help="study file (TOML), or the study folder it ran into (next to the file)",
    )
    q.add_argument("--a", required=True, metavar="SELECTOR", help="the reference group A")
    q.add_argument("--b", required=True, metavar="SELECTOR", help="the group B (B - A)")
    q.add_argument("--preset", help="preset of the file (default: its study.default_preset)")
    q.add_argument("--out", help="study folder (default: next to the file, named after it)")
    q.add_argument(
        "--relative-to",
        metavar="CONDITION",
        help="a condition label (e.g. clean): compare each training's change from it "
        "(robustness) instead of its accuracy",
    )
    q.add_argument(
        "--format", choices=("table", "csv", "md"), default="table", help="output (table)"
    )
    q.add_argument("-o", "--output", help="write the table to this file instead of stdout")
    q.add_argument("--plot", metavar="FILE", help="also write the figure (PNG) here")
    q.set_defaults(func=cmd_compare)

    q = sub.add_parser(
        "claims",
        help="the study file's claims ([[report.claim]]) judged from its store",
        description="Each claim: holds / does not hold / inconclusive / not run, from the "
        "95 % intervals of its paired differences per condition (binsense.study.claims).",
    )
    q.add_argument(
        "file",
        metavar="STUDY",
        action=_StudyOrFolder,
        help="study file (TOML), or the study folder it ran into (next to the file)",
    )
    q.add_argument("--preset", help="preset of the file (default: its study.default_preset)")
    q.add_argument("--out", help="study folder (default: next to the file, named after it)")
    q.add_argument("-o", "--output", help="write the Markdown to this file instead of stdout")
    q.set_defaults(func=cmd_claims)


__all__ = ["add_study_commands"]
