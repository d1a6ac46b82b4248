"""Results of a study as flat rows, and their CSV / Markdown / JSON export.

The store keeps every row ever computed for a study folder (several presets or edits of
the file may share it); :func:`study_rows` selects the rows of the *current* plan — its
trainings and conditions — and flattens them: one row per (run, condition, draw), the
training-grid values as ``train.<key>`` columns and the condition parameters as
``param.<key>`` columns, so a table or a pandas frame needs no JSON decoding::

    df = pandas.DataFrame(study_rows(load_study("studies/quickstart.toml")))

Exports carry no code: in CSV, a text cell that a spreadsheet would run as a formula
(starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) gets a leading
single quote (OWASP's advice; numbers, negative ones included, stay numbers); in
Markdown, user text is escaped (:func:`md_inline`, :func:`md_block`) so it cannot become a
link, an image, raw HTML, a heading or a list — it renders as the text it is.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import TYPE_CHECKING, Any

from binsense.errors import BinsenseError
from binsense.study.store import ResultStore

if TYPE_CHECKING:  # the schema imports torch; exports and the CLI parser do not need it
    from binsense.study.schema import Study

FORMATS = ("csv", "markdown", "json")

#: Columns of every row (with no rows, the header of an empty CSV/Markdown table).
_COLUMNS = (
    "study", "run_id", "training", "dataset", "model", "seed", "config_hash", "kind",
    "condition", "condition_id", "draw", "accuracy", "loss", "n", "data_fingerprint", "device",
    "binsense", "torch", "trained_at", "evaluated_at",
)  # fmt: skip


def study_rows(study: Study) -> list[dict[str, Any]]:
    """The stored results of ``study``'s plan as flat dicts, in plan order.

    Opens the store read-only (it works in a read-only folder).
    """
    with ResultStore(study.store_path, readonly=True) as store:
        stored = store.results(
            run_ids=[t.run_id for t in study.trainings],
            condition_ids=[e.condition_id for e in study.evaluations],
        )
    by_key = {(r["run_id"], r["condition_id"], r["draw"]): r for r in stored}
    train_keys = [k for k in dict.fromkeys(k for t in study.trainings for k in t.grid)]
    param_keys = list(dict.fromkeys(k for e in study.evaluations for k in e.condition.params()))
    rows = []
    for t in study.trainings:
        for e in study.evaluations:
            for draw in range(e.draws):
                r = by_key.get((t.run_id, e.condition_id, draw))
                if r is None:
                    continue
                row: dict[str, Any] = {
                    "study": study.name,
                    "run_id": t.run_id,
                    "training": t.label(),
                    "dataset": r["dataset"],
                    "model": r["model"],
                    "seed": r["seed"],
                    "config_hash": r["config_hash"],
                }
                row.update({f"train.{k}": t.grid.get(k) for k in train_keys if k != "seed"})
                row.update(kind=r["kind"], condition=r["condition"], condition_id=r["condition_id"])
                row.update({f"param.{k}": r["params"].get(k) for k in param_keys})
                row.update(
                    draw=draw,
                    accuracy=r["accuracy"],
                    loss=r["loss"],
                    n=r["n"],
                    data_fingerprint=r["data_fingerprint"],
                    device=r["device"],
                    binsense=r["versions"].get("binsense"),
                    torch=r["versions"].get("torch"),
                    trained_at=r["trained_at"],
                    evaluated_at=r["evaluated_at"],
                )
                rows.append(row)
    return rows


def _cell(value: Any, float_format: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, float_format) if float_format else repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


#: Line breaks of any kind (user text is kept on one line).
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
#: Characters that start Markdown inline syntax: code, emphasis, links and images,
#: strikethrough, table cells, headings.
_MD_SPECIAL = re.compile(r"([\\`*\[\]~|#])")
#: What makes a line a block (list item, thematic break, setext underline, ordered list).
_MD_BLOCK_START = re.compile(r"^(?:([-+=_])|(\d+)([.)]))")


def md_inline(text: Any) -> str:
    """``text`` as literal Markdown text on one line: no link, image, raw HTML, code,
    emphasis or table cell can come out of it (``<``, ``>`` and ``&`` become entities,
    ``\\ ` * [ ] ~ | #`` are backslash-escaped)."""
    text = _LINE_BREAKS.sub(" ", str(text))
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def md_block(text: Any) -> str:
    """:func:`md_inline`, and no block syntax at its start (list item, rule, heading)."""
    text = md_inline(text).lstrip()  # (4 leading spaces would make a code block)
    return _MD_BLOCK_START.sub(
        lambda m: "\\" + m.group(1) if m.group(1) else m.group(2) + "\\" + m.group(3), text
    )


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table; every cell is literal text (:func:`md_inline`)."""

    def esc(value: Any) -> str:
        return md_inline(_cell(value, ".4g"))

    lines = ["| " + " | ".join(esc(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


#: First characters that make a spreadsheet treat a cell as a formula (OWASP).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A text cell that starts like a formula, prefixed with ``'``; anything else as is."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """``rows`` (from :func:`study_rows`) as ``csv``, ``markdown`` or ``json`` text."""
    if fmt not in FORMATS:
        raise BinsenseError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    columns = list(dict.fromkeys(k for row in rows for k in row)) or list(_COLUMNS)
    if fmt == "markdown":
        return markdown_table(columns, [[row.get(c) for c in columns] for row in rows])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([csv_safe(c) for c in columns])
    writer.writerows([[_cell(csv_safe(row.get(c))) for c in columns] for row in rows])
    return buf.getvalue()


__all__ = [
    "FORMATS",
    "csv_safe",
    "format_rows",
    "markdown_table",
    "md_block",
    "md_inline",
    "study_rows",
]
