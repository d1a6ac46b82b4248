"""The results store: one SQLite database per study (stdlib :mod:`sqlite3`, WAL mode).

Two tables and a view:

- ``runs``: one row per trained model (``run_id`` = content hash of its training config):
  the config as JSON, its hash, seed, data set, model, status (``training`` while it is
  being trained, ``trained`` once its last epoch is checkpointed), per-epoch metrics,
  final test accuracy, the fingerprints of the train and test data, package versions,
  device and timestamps, and the trained model's deployed ``size`` (JSON: the totals of
  :func:`binsense.compress.summary.summary` — Mbit, parameters by precision, binary
  MACs, ``fully_binary``; a column added to stores created before it, NULL until set).
- ``results``: one row per ``(run_id, condition_id, draw)`` — the primary key — with the
  condition's kind, parameters (JSON) and label, accuracy, loss, number of test images,
  the fingerprint of those images, versions, device and timestamps.
- ``study_rows``: ``results`` joined with the columns of ``runs`` a reader usually wants;
  ``pandas.read_sql("SELECT * FROM study_rows", sqlite3.connect(path))`` loads it.

- ``failures``: one row per grid point that failed — a training (``condition_id`` empty,
  ``draw`` -1; the run's status is then ``failed``) or one draw of a condition — with the
  reason; the row is removed when a later run succeeds there.

Crash safety: every result is inserted in its own transaction (``INSERT OR IGNORE`` on the
primary key), so a process killed at any moment loses at most the draw in flight, and a
restarted run can never duplicate a row. WAL journaling keeps readers (``study results``,
``study report``) working while a run writes.

Data never mixes: a result whose test-data fingerprint differs from that of the rows
already stored for the same run and condition is refused (:class:`DataMismatchError`,
naming both fingerprints), so a report never pools accuracies measured on different
images.

Readers open the store read-only (``ResultStore(path, readonly=True)``: an SQLite
``mode=ro`` URI), so a store in a read-only folder can be read; nothing is written. Errors
say what happened — the disk is full, the folder is read-only, the file is not a binsense
store or is damaged — and never advise throwing away a store that is intact.

Someone else's file is never touched. An SQLite database is a binsense store when it has
the tables ``meta``, ``runs`` and ``results`` (:func:`is_store_tables`: the one criterion,
for opening and for checking); one with other tables is refused, and so is a file that is
not a database at all. :meth:`ResultStore.check_file` applies the same criterion without
opening the store for writing (without creating anything): the study runner's pre-flight
check and the read-only commands refuse such a file before they start.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from binsense.errors import BinsenseError, DataMismatchError

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
    train_seconds REAL,
    size TEXT
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
CREATE TABLE IF NOT EXISTS failures (
    run_id TEXT NOT NULL,
    condition_id TEXT NOT NULL,
    draw INTEGER NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL,
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
_JSON_COLUMNS = ("config", "metrics", "versions", "params", "size")


#: The tables every binsense store has (a database without them is someone else's).
_OWN_TABLES = frozenset({"meta", "runs", "results"})


def is_store_tables(tables: Iterable[str]) -> bool:
    """Whether an SQLite database with these tables is a binsense results store: the one
    criterion (the store's tables are created together, in one script)."""
    return set(tables) >= _OWN_TABLES


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _look(conn: sqlite3.Connection) -> tuple[set[str], str | None]:
    """A database's tables and, when it is a binsense store (:func:`is_store_tables`),
    the format its ``meta`` table records (``None``: not a store, or none recorded)."""
    tables = _tables(conn)
    if not is_store_tables(tables):
        return tables, None
    row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    return tables, None if row is None else str(row[0])


def _foreign_message(path: Path, tables: Iterable[str]) -> str:
    """The one line that refuses someone else's SQLite database, naming its tables."""
    names = sorted(tables)
    listing = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (
        f"{str(path)!r} is an SQLite database but not a binsense results store (tables: "
        f"{listing or 'none'}); binsense leaves it alone: move it away or pass another --out "
        "folder."
    )


class StoreError(BinsenseError):
    """The results store cannot be opened, read or written (one line saying why)."""


def _errorname(e: sqlite3.Error) -> str:
    name = getattr(e, "sqlite_errorname", None)  # Python >= 3.11
    if name:
        return str(name)
    text = str(e).lower()  # pragma: no cover - Python 3.10
    for needle, code in (
        ("disk is full", "SQLITE_FULL"), ("readonly", "SQLITE_READONLY"),
        ("not a database", "SQLITE_NOTADB"), ("malformed", "SQLITE_CORRUPT"),
        ("unable to open", "SQLITE_CANTOPEN"), ("locked", "SQLITE_BUSY"),
        ("disk i/o", "SQLITE_IOERR"),
    ):  # fmt: skip
        if needle in text:
            return code
    return "SQLITE_ERROR"


def store_error(e: sqlite3.Error, path: Path, doing: str) -> StoreError:
    """One line for an SQLite error on the store at ``path`` while ``doing`` something.

    Only a file that is not a binsense store (or is damaged) gets advice to move it; a
    full disk, a read-only folder or a lock leave the store intact and say so.
    """
    name = _errorname(e).split("_")
    code = "_".join(name[:2])  # SQLITE_READONLY_DBMOVED -> SQLITE_READONLY
    where = repr(str(path))
    if code == "SQLITE_FULL":
        why = (
            "the disk is full (SQLite: database or disk is full); free some space and run "
            "again — every result stored so far is intact"
        )
    elif code in ("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH"):
        why = (
            f"the store or its folder is read-only ({e}); `binsense study results | report "
            "| show` can still read it, and `study run` needs a writable folder (--out)"
        )
    elif code == "SQLITE_CANTOPEN":
        why = (
            f"it cannot be opened ({e}): check that the folder exists and that you may read "
            "it (and write it, to run a study)"
        )
    elif code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        why = f"it is locked by another process ({e}); wait for it to finish and try again"
    elif code == "SQLITE_IOERR":
        why = f"an I/O error occurred ({e}); check the disk — the store may be intact"
    elif code == "SQLITE_NOTADB":
        why = (
            "the file is not an SQLite database, so not a binsense results store; use "
            "another --out folder, or move the file away if it is not needed"
        )
    elif code == "SQLITE_CORRUPT":
        why = (
            f"the database is damaged ({e}); keep a copy, then try `sqlite3 {path} "
            "'.recover'` — or use another --out folder and run the study again"
        )
    else:
        why = str(e)
    return StoreError(f"cannot {doing} the results store {where}: {why}.")


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
    mode lets them see every committed row while a run is writing. ``readonly=True``
    opens the file read-only (it must exist); every write then fails.
    """

    def __init__(
        self, path: str | os.PathLike, *, create: bool = True, readonly: bool = False
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if (readonly or not create) and not self.path.is_file():
            if self.path.is_dir():
                raise StoreError(
                    f"{str(self.path)!r} is a folder, not a results store; point --out at "
                    "the study folder that holds results.sqlite."
                )
            raise StoreError(
                f"no results store at {str(self.path)!r}; run `binsense study run` first "
                "(or pass the --out folder the study was run with)."
            )
        if readonly:
            self.conn = self._connect_readonly()
            return
        if self.path.is_dir():
            raise StoreError(
                f"{str(self.path)!r} is a folder where the results store should be; move it "
                "away or use another --out folder."
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from binsense.io import write_error

            raise write_error(e, self.path.parent, "create the study folder") from None
        try:
            self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self._check_foreign()
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # durable against process kills
            self.conn.executescript(_SCHEMA)
            self._check_format()
            self._add_columns()
        except sqlite3.Error as e:
            raise store_error(e, self.path, "open") from None

    def _connect_readonly(self) -> sqlite3.Connection:
        """Open read-only; in a read-only folder a checkpointed WAL store is opened
        ``immutable`` (SQLite cannot create its ``-shm`` file there)."""
        base = "file:" + urllib.parse.quote(os.fspath(self.path.absolute()))
        wal = Path(f"{self.path}-wal")
        attempts = [f"{base}?mode=ro"]
        try:
            if not wal.exists() or wal.stat().st_size == 0:
                attempts.append(f"{base}?mode=ro&immutable=1")
        except OSError:
            pass
        error: sqlite3.Error | None = None
        for uri in attempts:
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
                conn.row_factory = sqlite3.Row
                tables, found = _look(conn)
            except sqlite3.Error as e:
                error = e
                continue
            if not is_store_tables(tables):
                conn.close()
                raise StoreError(_foreign_message(self.path, tables))
            if found != str(STORE_FORMAT):
                conn.close()
                raise _format_error(self.path, found)
            return conn
        assert error is not None
        raise store_error(error, self.path, "read") from None

    def _check_foreign(self) -> None:
        """Refuse to add tables to someone else's SQLite database (:func:`is_store_tables`;
        an empty database becomes a store)."""
        tables = _tables(self.conn)
        if tables and not is_store_tables(tables):
            self.conn.close()
            raise StoreError(_foreign_message(self.path, tables))

    @staticmethod
    def check_file(path: str | os.PathLike) -> None:
        """Refuse (:class:`StoreError`, one line) a file at ``path`` that cannot be a
        study's results store, without writing or creating anything:

        - a folder where the store's file belongs;
        - a file that is not readable for you;
        - a file that is not an SQLite database;
        - an SQLite database that is not a binsense store (:func:`is_store_tables`; the
          line lists its tables), or a store of another format.

        Nothing at ``path``, or an empty file, is fine (the store is created there). The
        file is read read-only (a running study's WAL included), else as immutable (a
        read-only folder without the WAL index); a database that is busy or locked is
        not judged here (opening it reports that).
        """
        path = Path(path)
        if not path.exists() and not path.is_symlink():
            return
        if path.is_dir():
            raise StoreError(
                f"{str(path)!r} is a folder where the study's results store (an SQLite file) "
                "belongs; move it away or pass another --out folder."
            )
        if not os.access(path, os.R_OK):
            raise StoreError(
                f"results store {str(path)!r} is not readable for you (permission denied); "
                "fix its permissions or pass another --out folder."
            )
        if path.stat().st_size == 0:
            return
        try:
            tables, found = _look_read_only(path)
        except sqlite3.DatabaseError as e:
            if _errorname(e) != "SQLITE_NOTADB" and "not a database" not in str(e):
                return  # busy, locked, ...: not ours to judge; opening the store reports it
            raise StoreError(
                f"{str(path)!r} is not a binsense results store (not an SQLite database: {e}); "
                "move it away or pass another --out folder."
            ) from None
        if tables and not is_store_tables(tables):
            raise StoreError(_foreign_message(path, tables))
        if found is not None and found != str(STORE_FORMAT):
            raise _format_error(path, found)

    def _check_format(self) -> None:
        with self.transaction("open") as c:
            c.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?)", (str(STORE_FORMAT),)
            )
            found = c.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()[0]
        if found != str(STORE_FORMAT):
            raise _format_error(self.path, found)

    def _add_columns(self) -> None:
        """Columns added since format 1 (nullable): added to an older store in place."""
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
        if "size" not in have:
            with self.transaction("upgrade") as c:
                c.execute("ALTER TABLE runs ADD COLUMN size TEXT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self, doing: str = "write to") -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back if the block raises).

        An SQLite error (disk full, read-only, locked) becomes one :class:`StoreError`.
        """
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise store_error(e, self.path, doing) from None
        try:
            yield self.conn
        except BaseException as e:
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):  # SQLite may have rolled back (SQLITE_FULL)
                    self.conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise store_error(e, self.path, doing) from None
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise store_error(e, self.path, doing) from None

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a read query (an SQLite error becomes one :class:`StoreError`)."""
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise store_error(e, self.path, "read") from None

    # ------------------------------------------------------------------ runs

    def start_run(self, run_id: str, config: dict[str, Any], config_hash: str) -> None:
        """Record that ``run_id`` is being trained (a failed run is being trained again;
        otherwise a no-op if it is already recorded)."""
        with self.transaction() as c:
            c.execute(
                "INSERT INTO runs(run_id, config, config_hash, seed, dataset, model, status, "
                "started) VALUES (?, ?, ?, ?, ?, ?, 'training', ?) ON CONFLICT(run_id) DO "
                "UPDATE SET status = 'training' WHERE status = 'failed'",
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
            c.execute("DELETE FROM failures WHERE run_id = ? AND draw = -1", (run_id,))

    def set_run_size(self, run_id: str, size: dict[str, Any]) -> None:
        """Record the trained model's deployed size (summary totals) in its run row."""
        with self.transaction() as c:
            c.execute("UPDATE runs SET size = ? WHERE run_id = ?", (_dumps(size), run_id))

    def fail_run(self, run_id: str, reason: str) -> None:
        """Mark ``run_id`` failed (its training raised) and record why."""
        with self.transaction() as c:
            c.execute("UPDATE runs SET status = 'failed' WHERE run_id = ?", (run_id,))
            c.execute(
                "INSERT OR REPLACE INTO failures(run_id, condition_id, draw, stage, reason, at) "
                "VALUES (?, '', -1, 'training', ?, ?)",
                (run_id, reason, utc_now()),
            )

    def fail_draw(self, run_id: str, condition_id: str, draw: int, reason: str) -> None:
        """Record that one draw of a condition failed (no result row is written)."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO failures(run_id, condition_id, draw, stage, reason, at) "
                "VALUES (?, ?, ?, 'evaluation', ?, ?)",
                (run_id, condition_id, draw, reason, utc_now()),
            )

    def clear_failure(self, run_id: str, condition_id: str = "", draw: int = -1) -> None:
        """Forget a recorded failure (the grid point has now succeeded)."""
        with self.transaction() as c:
            c.execute(
                "DELETE FROM failures WHERE run_id = ? AND condition_id = ? AND draw = ?",
                (run_id, condition_id, draw),
            )

    def failures(
        self, run_ids: Iterable[str] | None = None, condition_ids: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Recorded failures, optionally of ``run_ids`` (training failures always kept
        when their run is wanted; draw failures only for ``condition_ids`` if given)."""
        if not self._query("SELECT 1 FROM sqlite_master WHERE name = 'failures'"):
            return []  # a store written before failures were recorded, opened read-only
        rows = [
            dict(r)
            for r in self._query("SELECT * FROM failures ORDER BY run_id, condition_id, draw")
        ]
        if run_ids is not None:
            runs = set(run_ids)
            rows = [r for r in rows if r["run_id"] in runs]
        if condition_ids is not None:
            conditions = set(condition_ids)
            rows = [r for r in rows if r["draw"] < 0 or r["condition_id"] in conditions]
        return rows

    def run_status(self, run_id: str) -> str | None:
        """``"training"``, ``"trained"``, ``"failed"`` or ``None`` (never started)."""
        rows = self._query("SELECT status FROM runs WHERE run_id = ?", (run_id,))
        return rows[0][0] if rows else None

    def run_row(self, run_id: str) -> dict[str, Any] | None:
        """The run's row (JSON columns decoded), or ``None``."""
        rows = self._query("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return _decoded(rows[0]) if rows else None

    def runs(self, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Run rows (JSON columns decoded), optionally only ``run_ids``."""
        rows = [_decoded(r) for r in self._query("SELECT * FROM runs ORDER BY started")]
        if run_ids is not None:
            wanted = set(run_ids)
            rows = [r for r in rows if r["run_id"] in wanted]
        return rows

    # --------------------------------------------------------------- results

    def done_draws(self, run_id: str) -> set[tuple[str, int]]:
        """``(condition_id, draw)`` pairs already stored for ``run_id``."""
        cur = self._query("SELECT condition_id, draw FROM results WHERE run_id = ?", (run_id,))
        return {(cid, draw) for cid, draw in cur}

    def data_fingerprints(self, run_id: str) -> dict[str, set[str]]:
        """Per condition id: the test-data fingerprints of ``run_id``'s stored rows."""
        out: dict[str, set[str]] = {}
        for cid, fp in self._query(
            "SELECT DISTINCT condition_id, data_fingerprint FROM results WHERE run_id = ?",
            (run_id,),
        ):
            out.setdefault(cid, set()).add(fp)
        return out

    def add_result(self, row: dict[str, Any]) -> bool:
        """Insert one result in its own transaction; ``False`` if the key already exists.

        Raises:
            DataMismatchError: rows of the same run and condition are stored with another
                test-data fingerprint (nothing is written).
        """
        values = [
            _dumps(row[k]) if k in ("params", "versions") else row[k] for k in _RESULT_COLUMNS
        ]
        with self.transaction() as c:
            other = c.execute(
                "SELECT data_fingerprint FROM results WHERE run_id = ? AND condition_id = ? "
                "AND data_fingerprint != ? LIMIT 1",
                (row["run_id"], row["condition_id"], row["data_fingerprint"]),
            ).fetchone()
            if other is not None:
                raise DataMismatchError(
                    mismatch_message(
                        row["run_id"], row["condition_id"], other[0], row["data_fingerprint"]
                    )
                )
            cur = c.execute(
                f"INSERT OR IGNORE INTO results({', '.join(_RESULT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_RESULT_COLUMNS))})",
                values,
            )
            c.execute(
                "DELETE FROM failures WHERE run_id = ? AND condition_id = ? AND draw = ?",
                (row["run_id"], row["condition_id"], row["draw"]),
            )
            return cur.rowcount == 1

    def results(
        self, run_ids: Iterable[str] | None = None, condition_ids: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Rows of ``study_rows`` (JSON columns decoded), optionally filtered, in key order."""
        rows = [
            _decoded(r)
            for r in self._query("SELECT * FROM study_rows ORDER BY run_id, condition_id, draw")
        ]
        if run_ids is not None:
            runs = set(run_ids)
            rows = [r for r in rows if r["run_id"] in runs]
        if condition_ids is not None:
            conditions = set(condition_ids)
            rows = [r for r in rows if r["condition_id"] in conditions]
        return rows


def _format_error(path: Path, found: str | None) -> StoreError:
    """A store of another format, or one whose format was never recorded."""
    if found is None:
        return StoreError(
            f"results store {str(path)!r} records no format (a run stopped while creating "
            "it); `binsense study run` completes it, or use a new --out folder."
        )
    return StoreError(
        f"results store {str(path)!r} has format {found}, this binsense reads "
        f"format {STORE_FORMAT}; use a new --out folder or a matching binsense."
    )


def _look_read_only(path: Path) -> tuple[set[str], str | None]:
    """:func:`_look` on the SQLite file at ``path``, read without writing: read-only (a
    running study's WAL included), else immutable (a read-only folder)."""
    error: sqlite3.DatabaseError | None = None
    for query in ("mode=ro", "mode=ro&immutable=1"):
        try:
            uri = f"file:{urllib.parse.quote(os.fspath(path.absolute()))}?{query}"
            conn = sqlite3.connect(uri, uri=True, timeout=5)
            try:
                return _look(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            error = e
    assert error is not None
    raise error


def mismatch_message(run_id: str, condition_id: str, stored: str, new: str) -> str:
    """The one line that refuses to mix results on different test data."""
    return (
        f"run {run_id}, condition {condition_id}: the store holds results on test data "
        f"with fingerprint {stored[:16]}…, but the test data now has {new[:16]}…; results on "
        "different data are never mixed — restore the original test images, or run the "
        "study into another --out folder."
    )


__all__ = [
    "STORE_FORMAT",
    "DataMismatchError",
    "ResultStore",
    "StoreError",
    "is_store_tables",
    "mismatch_message",
    "store_error",
    "utc_now",
]
