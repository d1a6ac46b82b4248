"""Studies: train a grid of models, evaluate each under a grid of conditions, compare.

A study is a TOML file (:mod:`~binsense.study.schema`) run by
:func:`~binsense.study.runner.run_study` into a study folder that holds the run folders
and one SQLite results store (:mod:`~binsense.study.store`); exports
(:mod:`~binsense.study.export`) and reports (:mod:`~binsense.study.report`) are built
from the store. The command line is ``binsense study run|results|report|show FILE``;
from Python::

    from binsense.study import load_study, run_study, study_rows, write_report

    summary = run_study("studies/quickstart.toml", preset="smoke")
    print(summary.line())
    study = load_study("studies/quickstart.toml", preset="smoke")
    write_report(study)
    df = pandas.DataFrame(study_rows(study))

The names below are imported on first use (PEP 562), so that ``import binsense.study.cli``
— done by every ``binsense`` command to build its parser — does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalOptions": "schema",
    "Evaluation": "schema",
    "Study": "schema",
    "StudyFileError": "schema",
    "Training": "schema",
    "load_study": "schema",
    "ResultStore": "store",
    "format_rows": "export",
    "study_rows": "export",
    "StudySummary": "runner",
    "run_study": "runner",
    "study_progress": "runner",
    "ReportFiles": "report",
    "report_study": "report",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"binsense.study.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
