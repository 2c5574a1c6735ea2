"""The record store of one sweep: `records.sqlite`, one transaction per trial.

Writers open the database in WAL mode so several worker processes can add trials at once; a
killed sweep never leaves a half-written trial. Readers (`dataframe`, `statuses`) never modify
the folder: a quiescent store (no `-wal` file beside it, i.e. no writer connected) is opened
immutable, a store that a running sweep is writing is opened read-only, and nothing is created.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from harness.errors import EnvironmentFault
from harness.results.records import TrialRecord, as_record_dict, parse_stored_record, record_json

STORE_NAME = "records.sqlite"
_SCHEMA = """CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT, trial_key TEXT NOT NULL, status TEXT NOT NULL,
    protocol TEXT, created REAL NOT NULL, record TEXT NOT NULL)"""
_CURVES_SCHEMA = """CREATE TABLE IF NOT EXISTS curves (
    trial_key TEXT NOT NULL, epoch INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
    PRIMARY KEY (trial_key, epoch, name))"""


class ResultStore:
    """Trial records of one sweep, in SQLite (stdlib: works wherever the harness runs)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / STORE_NAME

    def _connect(self) -> sqlite3.Connection:
        """A writing connection (creates the folder and the schema)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(_SCHEMA)
        con.execute(_CURVES_SCHEMA)
        con.execute("CREATE INDEX IF NOT EXISTS records_key ON records(trial_key)")
        return con

    def check_writable(self) -> None:
        """Raise EnvironmentFault unless records can be written here and every stored one read back
        (run before a sweep trains, so a damaged row stops it before, not after, the training)."""
        try:
            with closing(self._connect()) as con:
                con.execute("BEGIN IMMEDIATE")
                con.rollback()
        except sqlite3.Error as exc:
            raise EnvironmentFault(f"{self.path}: the record store cannot be written ({exc}); if the file is "
                                   "damaged, move it away and rerun") from None
        except OSError as exc:
            raise EnvironmentFault(f"{self.folder}: cannot write the record store ({exc.strerror or exc})") from None
        self.dataframe()

    def _read_connection(self) -> sqlite3.Connection:
        """A connection that cannot write and leaves no `-wal`/`-shm` file behind."""
        wal = self.path.with_name(self.path.name + "-wal")
        mode = "mode=ro" if wal.exists() else "immutable=1"
        try:
            return sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?{mode}", uri=True, timeout=60)
        except sqlite3.Error as exc:
            raise EnvironmentFault(f"{self.path}: cannot open the record store ({exc})") from None

    def _read(self, query: str) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        with closing(self._read_connection()) as con:
            try:
                return con.execute(query).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise EnvironmentFault(f"{self.path}: cannot read the record store ({exc})") from None
            except sqlite3.DatabaseError as exc:
                raise EnvironmentFault(f"{self.path}: not a readable record store ({exc})") from None

    def put_trial(self, trial_key: str, records: Sequence[TrialRecord | Mapping[str, Any]],
                  curves: Sequence[Mapping[str, float]] | None = None) -> None:
        """Replace every record of `trial_key` by `records` (and its training curves), atomically.

        `curves`: one mapping per epoch, `epoch` and named values (harness.curves).
        """
        rows = [(trial_key, as_record_dict(r)["status"], as_record_dict(r).get("protocol"), record_json(r))
                for r in records]
        with closing(self._connect()) as con, con:
            con.execute("DELETE FROM records WHERE trial_key = ?", (trial_key,))
            now = time.time()
            con.executemany("INSERT INTO records (trial_key, status, protocol, created, record) VALUES (?, ?, ?, ?, ?)",
                            [(key, status, protocol, now, blob) for key, status, protocol, blob in rows])
            if curves is not None:
                con.execute("DELETE FROM curves WHERE trial_key = ?", (trial_key,))
                con.executemany("INSERT INTO curves (trial_key, epoch, name, value) VALUES (?, ?, ?, ?)",
                                [(trial_key, int(row["epoch"]), name, float(value))
                                 for row in curves for name, value in row.items() if name != "epoch"])

    def statuses(self) -> dict[str, str]:
        """trial_key -> status of every stored trial."""
        return dict(self._read("SELECT trial_key, status FROM records GROUP BY trial_key"))

    def curves(self) -> pd.DataFrame:
        """Training curves: one row per (trial_key, epoch), one column per value (harness.curves)."""
        rows = self._read("SELECT trial_key, epoch, name, value FROM curves")
        if not rows:
            return pd.DataFrame(columns=["trial_key", "epoch"])
        long = pd.DataFrame(rows, columns=["trial_key", "epoch", "name", "value"])
        wide = long.pivot(index=["trial_key", "epoch"], columns="name", values="value")
        return wide.sort_index().reset_index().rename_axis(columns=None)

    def dataframe(self) -> pd.DataFrame:
        """Every stored record as one row (`record_id` in insertion order).

        A damaged row (not JSON, or without the fields a table needs) raises EnvironmentFault
        naming the store and the row: a table never shows it as a silent 'nan' row.
        """
        rows = self._read("SELECT id, record FROM records ORDER BY id")
        return pd.DataFrame([{"record_id": i, **self._parse(i, r)} for i, r in rows])

    def _parse(self, row: int, text: Any) -> dict[str, Any]:
        try:
            return parse_stored_record(text)
        except ValueError as exc:
            raise EnvironmentFault(
                f"{self.path} row {row}: {exc}. Remove that row (sqlite3 {self.path} 'DELETE FROM records WHERE "
                f"id = {row}') or move the store away") from None
