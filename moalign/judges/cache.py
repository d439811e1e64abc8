"""A local SQLite cache of judge calls: a killed annotation resumes with no repeated paid call.

Every call is keyed by (template version, judge model, prompt, response) (a pairwise call adds
its second answer, :func:`call_key`); its outcome (a result, or a failure after the allowed
re-asks) is committed as soon as the call returns (by a writer thread, :meth:`JudgeCache.put_soon`,
so that the judge's event loop never waits on a commit), so a crash loses at most the calls in
flight and the answers of the last few milliseconds still queued for the writer.
SQLite rather than a JSONL log: lookups by key stay fast at millions of rows, writes are
transactional, and concurrent readers are safe (WAL journal).

Where a call's result goes. A per-dimension score (the 1-5 int of :class:`~moalign.judges.llm.
LLMJudge`) is in ``score``, as it always was. Any other result (a pairwise verdict or label such as
``"A"`` or ``"A>>B"``, an MT-bench rating such as ``7.5``) is in ``value``, as JSON text, with
``score`` NULL. ``value`` is a nullable TEXT column added by ``ALTER TABLE`` when a cache made
before it is opened: existing caches keep working and their rows (``value`` NULL) read as before.
A failure has both NULL and ``error`` set. One caveat of the migration: a moalign from before the
column can still read a migrated cache, but not write to it (its INSERT names no columns).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judge_calls (
    key TEXT PRIMARY KEY,
    dimension TEXT NOT NULL,    -- the dimension, or the kind of call ("pairwise:...", "rating:...")
    model TEXT NOT NULL,
    template_version TEXT NOT NULL,
    score INTEGER,              -- a dimension's score; NULL: the judge failed, or see value
    reply TEXT,
    error TEXT,
    attempts INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    created REAL NOT NULL,
    value TEXT                  -- JSON: a verdict, label or rating; NULL: a score, a failure
)
"""

_COLUMNS = (
    "key, dimension, model, template_version, score, reply, error, attempts, tokens, created, value"
)
_INSERT = f"INSERT OR REPLACE INTO judge_calls ({_COLUMNS}) VALUES ({', '.join('?' * 11)})"


def call_key(template_version: str, model: str, prompt: str, response: str, *more: str) -> str:
    """The cache key of one call. ``more``: further texts the call shows (a pairwise call's second
    answer); without them the key is the one moalign always made, so old entries still match."""
    payload = json.dumps([template_version, model, prompt, response, *more], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class CachedCall:
    score: int | None
    reply: str | None
    error: str | None
    attempts: int
    tokens: int
    #: a result that is not a dimension score (a verdict, a label, a rating); None otherwise
    value: Any = None

    @property
    def result(self) -> Any:
        """What the call gave: the score, the value, or None for a failure."""
        return self.score if self.value is None else self.value


def _row(key: str, dimension: str, model: str, version: str, call: CachedCall, now: float) -> tuple:
    value = None if call.value is None else json.dumps(call.value, ensure_ascii=False)
    return (key, dimension, model, version, call.score, call.reply, call.error, call.attempts,
            call.tokens, now, value)


class JudgeCache:
    """``get_many`` before a batch, ``put`` (or ``put_soon``) after each call; safe to share between
    threads."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
        self._db.execute(_SCHEMA)
        self._add_value_column()
        self._queue: queue.Queue[tuple | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._write_error: BaseException | None = None

    def _add_value_column(self) -> None:
        """A cache made before the ``value`` column gets it (NULL in every existing row)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(judge_calls)")}
        if "value" in columns:
            return
        try:
            self._db.execute("ALTER TABLE judge_calls ADD COLUMN value TEXT")
        except sqlite3.OperationalError as error:  # another process added it in between
            if "duplicate column" not in str(error).lower():
                raise

    def get_many(self, keys: list[str]) -> dict[str, CachedCall]:
        self.flush()
        found: dict[str, CachedCall] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite's bound-variable limit
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    "SELECT key, score, reply, error, attempts, tokens, value FROM judge_calls "
                    f"WHERE key IN ({marks})",
                    chunk,
                )
                for key, score, reply, error, attempts, tokens, value in rows:
                    value = None if value is None else json.loads(value)
                    found[key] = CachedCall(score, reply, error, attempts, tokens, value)
        return found

    def put(
        self, key: str, *, dimension: str, model: str, template_version: str, call: CachedCall
    ) -> None:
        row = _row(key, dimension, model, template_version, call, time.time())
        with self._lock:
            self._db.execute(_INSERT, row)

    def put_soon(
        self, key: str, *, dimension: str, model: str, template_version: str, call: CachedCall
    ) -> None:
        """``put`` by a writer thread: returns at once. The writer commits each row as soon as it is
        free, the rows queued meanwhile in one transaction (a commit per call cost the judge's event
        loop 0.2-0.7 ms, a fifth of its time at 300 calls/s). :meth:`flush` waits for them."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_queued, name="judge-cache-writer",
                                            daemon=True)
            self._writer.start()
        self._queue.put(_row(key, dimension, model, template_version, call, time.time()))

    def _write_queued(self) -> None:
        while True:
            rows = [self._queue.get()]
            while not self._queue.empty():
                rows.append(self._queue.get_nowait())  # this thread is the only consumer
            values = [row for row in rows if row is not None]
            try:
                if values and self._write_error is None:
                    self._insert(values)
            except BaseException as error:  # noqa: BLE001 - raised by flush(), in the caller's thread
                self._write_error = error
            finally:
                for _ in rows:
                    self._queue.task_done()
            if None in rows:  # close()
                return

    def flush(self) -> None:
        """Wait until every ``put_soon`` row is committed; raise the writer's error if a commit
        failed (the rows from then on are not written)."""
        if self._writer is not None:
            self._queue.join()
        if self._write_error is not None:
            error, self._write_error = self._write_error, None
            raise error

    def put_many(self, rows: Iterable[tuple[str, str, str, str, CachedCall]]) -> None:
        """``(key, dimension, model, template_version, call)`` rows in one transaction (imports,
        tests)."""
        now = time.time()
        self._insert([
            _row(key, dimension, model, version, call, now)
            for key, dimension, model, version, call in rows
        ])

    def _insert(self, values: list[tuple]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(_INSERT, values)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        self.flush()
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM judge_calls").fetchone()[0]

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        with self._lock:
            self._db.close()
