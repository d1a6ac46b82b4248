"""The results store: one SQLite database per study (stdlib :mod:`sqlite3`, WAL mode).

Two tables and a view:

- ``runs``: one row per trained model (``run_id`` = content hash of its training config):
  the config as JSON, its hash, seed, data set, model, status (``training`` while it is
  being trained, ``trained`` once its last epoch is checkpointed), per-epoch metrics,
  final test accuracy, the fingerprints of the train and test data, package versions,
  device and timestamps.
- ``results``: one row per ``(run_id, condition_id, draw)`` — the primary key — with the
  condition's kind, parameters (JSON) and label, accuracy, loss, number of test images,
  the fingerprint of those images, versions, device and timestamps.
- ``study_rows``: ``results`` joined with the columns of ``runs`` a reader usually wants;
  ``pandas.read_sql("SELECT * FROM study_rows", sqlite3.connect(path))`` loads it.

Crash safety: every result is inserted in its own transaction (``INSERT OR IGNORE`` on the
primary key), so a process killed at any moment loses at most the draw in flight, and a
restarted run can never duplicate a row. WAL journaling keeps readers (``study results``,
``study report``) working while a run writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from binsense.errors import BinsenseError

#: Bump when the table layout changes incompatibly.
STORE_FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    epochs_done INTEGER NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL DEFAULT '[]',
    test_accuracy REAL,
    train_fingerprint TEXT,
    test_fingerprint TEXT,
    versions TEXT,
    device TEXT,
    started TEXT NOT NULL,
    finished TEXT,
    train_seconds REAL
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    condition_id TEXT NOT NULL,
    draw INTEGER NOT NULL,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    label TEXT NOT NULL,
    accuracy REAL NOT NULL,
    loss REAL NOT NULL,
    n INTEGER NOT NULL,
    data_fingerprint TEXT NOT NULL,
    versions TEXT NOT NULL,
    device TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (run_id, condition_id, draw)
);
CREATE VIEW IF NOT EXISTS study_rows AS
SELECT r.run_id, u.config_hash, u.dataset, u.model, u.seed, r.kind, r.label AS condition,
       r.condition_id, r.params, r.draw, r.accuracy, r.loss, r.n, r.data_fingerprint,
       r.device, r.versions, u.finished AS trained_at, r.finished AS evaluated_at, u.config
FROM results r JOIN runs u USING (run_id);
"""

_RESULT_COLUMNS = (
    "run_id", "condition_id", "draw", "kind", "params", "label", "accuracy", "loss", "n",
    "data_fingerprint", "versions", "device", "started", "finished", "seconds",
)  # fmt: skip
_JSON_COLUMNS = ("config", "metrics", "versions", "params")


def utc_now() -> str:
    """The current UTC time as ISO 8601 (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _decoded(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for k in _JSON_COLUMNS:
        if isinstance(out.get(k), str):
            out[k] = json.loads(out[k])
    return out


class ResultStore:
    """A study's SQLite database; use as a context manager (closes the connection).

    Readers never need the lock that :func:`binsense.study.runner.run_study` holds: WAL
    mode lets them see every committed row while a run is writing.
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise BinsenseError(
                f"no results store at {str(self.path)!r}; run `binsense study run` first "
                "(or pass the --out folder the study was run with)."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # durable against process kills
            self.conn.executescript(_SCHEMA)
            self._check_format()
        except sqlite3.DatabaseError as e:
            raise BinsenseError(
                f"{str(self.path)!r} is not a readable binsense results store ({e}); "
                "move it away and run the study again."
            ) from None

    def _check_format(self) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?)", (str(STORE_FORMAT),)
            )
            found = c.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()[0]
        if found != str(STORE_FORMAT):
            raise BinsenseError(
                f"results store {str(self.path)!r} has format {found}, this binsense reads "
                f"format {STORE_FORMAT}; use a new --out folder or a matching binsense."
            )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back if the block raises)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ runs

    def start_run(self, run_id: str, config: dict[str, Any], config_hash: str) -> None:
        """Record that ``run_id`` is being trained (no-op if it is already recorded)."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO runs(run_id, config, config_hash, seed, dataset, model, "
                "status, started) VALUES (?, ?, ?, ?, ?, ?, 'training', ?)",
                (
                    run_id, _dumps(config), config_hash, config["seed"], config["dataset"],
                    config["model"], utc_now(),
                ),
            )  # fmt: skip

    def finish_run(
        self,
        run_id: str,
        *,
        metrics: list[dict[str, Any]],
        fingerprints: dict[str, str],
        environment: dict[str, Any],
        train_seconds: float | None,
    ) -> None:
        """Mark ``run_id`` trained, with its metrics and provenance."""
        test_acc = metrics[-1].get("test_acc") if metrics else None
        with self.transaction() as c:
            c.execute(
                "UPDATE runs SET status = 'trained', epochs_done = ?, metrics = ?, "
                "test_accuracy = ?, train_fingerprint = ?, test_fingerprint = ?, versions = ?, "
                "device = ?, finished = ?, train_seconds = COALESCE(?, train_seconds) "
                "WHERE run_id = ?",
                (
                    len(metrics), _dumps(metrics), test_acc, fingerprints.get("train"),
                    fingerprints.get("test"), _dumps(environment), environment.get("device"),
                    utc_now(), train_seconds, run_id,
                ),
            )  # fmt: skip

    def run_status(self, run_id: str) -> str | None:
        """``"training"``, ``"trained"`` or ``None`` (never started)."""
        row = self.conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def runs(self, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Run rows (JSON columns decoded), optionally only ``run_ids``."""
        rows = [_decoded(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY started")]
        if run_ids is not None:
            wanted = set(run_ids)
            rows = [r for r in rows if r["run_id"] in wanted]
        return rows

    # --------------------------------------------------------------- results

    def done_draws(self, run_id: str) -> set[tuple[str, int]]:
        """``(condition_id, draw)`` pairs already stored for ``run_id``."""
        cur = self.conn.execute(
            "SELECT condition_id, draw FROM results WHERE run_id = ?", (run_id,)
        )
        return {(cid, draw) for cid, draw in cur}

    def add_result(self, row: dict[str, Any]) -> bool:
        """Insert one result in its own transaction; ``False`` if the key already exists."""
        values = [
            _dumps(row[k]) if k in ("params", "versions") else row[k] for k in _RESULT_COLUMNS
        ]
        with self.transaction() as c:
            cur = c.execute(
                f"INSERT OR IGNORE INTO results({', '.join(_RESULT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_RESULT_COLUMNS))})",
                values,
            )
            return cur.rowcount == 1

    def results(
        self, run_ids: Iterable[str] | None = None, condition_ids: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Rows of ``study_rows`` (JSON columns decoded), optionally filtered, in key order."""
        rows = [
            _decoded(r)
            for r in self.conn.execute(
                "SELECT * FROM study_rows ORDER BY run_id, condition_id, draw"
            )
        ]
        if run_ids is not None:
            runs = set(run_ids)
            rows = [r for r in rows if r["run_id"] in runs]
        if condition_ids is not None:
            conditions = set(condition_ids)
            rows = [r for r in rows if r["condition_id"] in conditions]
        return rows


__all__ = ["STORE_FORMAT", "ResultStore", "utc_now"]
