"""The ledger: one SQLite file per run holding every request and its answer.

One row per canonical request key (``Request.key(target.id)``). A row goes ``pending`` (written
before a remote request is sent, so an audit can see what was in flight when a run died) and then
``ok`` (the answer, committed before it is handed back) or ``error`` (kept for the record, never
served as an answer: a failed request is sent again on resume). Repeated queries are answered
from ``ok`` rows at no cost and counted in the ``hits`` column.

Schema (table ``queries``, ``PRAGMA user_version`` 3): ``key`` (primary key), ``target``,
``kind``, ``queries`` (model queries of the request, ``Request.queries``: n for a ``classify``
request of n inputs, else 1), ``request`` (canonical JSON; a dense request's arrays appear as
descriptors with dtype and shape), ``request_arrays`` (BLOB: the arrays' raw bytes, only with
``store_payloads=True``, else NULL), ``status``, ``response`` (JSON of ``{"output", "meta"}``,
arrays as descriptors), ``response_arrays`` (BLOB: raw bytes of the answer's arrays, e.g. the
float64 class probabilities of a dense ``classify``; NULL for plain JSON answers), ``error``,
``prompt_tokens``, ``completion_tokens``, ``cost``, ``latency_s``, ``attempts``, ``hits``,
``created_at``, ``updated_at``. Older files are upgraded in place when opened for writing: a
v1 file (no BLOB columns) gains them, a v1/v2 file gains ``queries`` (1 in old rows); a
read-only open of an older file reads ``queries`` as 1.

Writes are batched: ``begin``, ``record``, ``record_error`` and ``note_hits`` each commit their
whole list of rows in one transaction. The query layer calls ``begin`` (remote targets only) and
``record`` once per target call and ``note_hits`` once per submit, so a batch of 256 dense
requests to a local classifier is one commit (a 1×28×28 image's row is ~600 bytes).

Durability: WAL journal. A commit is in the WAL file before it returns, so a process killed
with SIGKILL right after keeps it: an answer handed back is never lost with the run. Writes for
remote targets (paid answers) are also fsynced on commit (``synchronous=FULL``), so a power cut
cannot lose them either; the answers of a local target (``record(..., fsync=False)``, what the
query layer does for ``target.remote`` False: they cost no money, only a forward pass) skip that
fsync (~7 ms a commit, the bulk of a dense batch's ledger time) and reach the disk with the next
fsynced commit or checkpoint; so do hit counts (``note_hits``).

Secrets: every text written passes a guard that redacts OpenAI/Hugging Face style keys,
bearer tokens and the values of environment variables named like ``*API_KEY*``, ``*_TOKEN``,
``*SECRET*``, ``*PASSWORD*``, so an API key echoed in an error message never reaches the file.

Thread-safe: one connection behind a lock (the query layer writes from worker threads).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bbzo.blackbox.protocol import (
    Request,
    Response,
    Usage,
    dumps_dense,
    loads_dense,
)
from bbzo.errors import InputError, TargetError
from bbzo.redaction import redact_text

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    key TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    queries INTEGER NOT NULL DEFAULT 1,
    request TEXT NOT NULL,
    request_arrays BLOB,
    status TEXT NOT NULL CHECK (status IN ('pending', 'ok', 'error')),
    response TEXT,
    response_arrays BLOB,
    error TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    latency_s REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    hits INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""
# Columns older files lack, with their declarations: v2 added the BLOBs, v3 ``queries``.
_ADDED_COLUMNS = {"request_arrays": "BLOB", "response_arrays": "BLOB",
                  "queries": "INTEGER NOT NULL DEFAULT 1"}
# Columns ``Ledger.summary`` reads; a file without them is not a bbzo ledger.
_READ_COLUMNS = frozenset({"key", "target", "kind", "status", "error", "prompt_tokens",
                           "completion_tokens", "cost", "latency_s", "attempts", "hits",
                           "updated_at"})
_SQLITE_MAGIC = b"SQLite format 3\x00"


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the bbzo ledger at ``path``; InputError for anything else.

    Creates, changes and locks nothing: a ledger a run has open (its ``-wal`` file exists) is
    read through SQLite's ``mode=ro``, which sees the live answers; a closed one is read as
    ``immutable`` (``mode=ro`` alone would leave ``-wal`` and ``-shm`` files behind). The file
    must be SQLite with a ``queries`` table holding the ledger's columns and a schema version
    this bbzo reads.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as err:
        raise InputError(f"cannot read ledger {path}: {err.strerror or err}") from None
    if head != _SQLITE_MAGIC:
        raise InputError(f"{path} is not a bbzo ledger (not an SQLite database); give a run "
                         f"folder or its ledger.sqlite")
    live = Path(f"{path}-wal").exists()
    uri = f"{path.absolute().as_uri()}?mode=ro{'' if live else '&immutable=1'}"
    db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None,
                         timeout=30.0)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        columns = {row[1] for row in db.execute("PRAGMA table_info(queries)")}
    except sqlite3.DatabaseError as err:
        db.close()
        raise InputError(f"{path} is not a bbzo ledger ({err}); give a run folder or its "
                         f"ledger.sqlite") from None
    if not _READ_COLUMNS <= columns or not 1 <= version:
        db.close()
        raise InputError(f"{path} is not a bbzo ledger (no 'queries' table with the ledger's "
                         f"columns, or schema version {version}); give a run folder or its "
                         f"ledger.sqlite")
    if version > SCHEMA_VERSION:
        db.close()
        raise InputError(f"ledger {path} has schema v{version}; this bbzo reads "
                         f"v{SCHEMA_VERSION}: upgrade bbzo")
    return db


def _percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted values (``p`` in (0, 1]); None if empty."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def _flat_signature(response: Response) -> tuple | None:
    """``(key, dtype, shape)`` of each array of a *flat array answer* (output a non-empty dict of
    numpy arrays under string keys, meta empty: a dense ``classify`` answer); None for any other
    answer."""
    output = response.output
    if type(output) is not dict or not output or response.meta:
        return None
    signature = []
    for key, value in output.items():
        if type(value) is not np.ndarray or type(key) is not str:
            return None
        signature.append((key, value.dtype, value.shape))
    return tuple(signature)


def _dump_answers(responses: list[Response]) -> list[tuple[str, bytes | None, dict | None]]:
    """Per response: the JSON text of ``{"output", "meta"}`` (arrays as descriptors), the arrays'
    bytes (None for plain JSON) and, for a flat array answer (``_flat_signature``), the output as
    read back (fresh little-endian C-ordered copies; None for other answers). Flat array answers
    with one signature share one text, dumped once, so each costs a lookup and a copy."""
    dumped: dict[tuple, tuple[str, list[np.dtype]]] = {}
    out: list[tuple[str, bytes | None, dict | None]] = []
    for response in responses:
        signature = _flat_signature(response)
        if signature is None:
            text, arrays = dumps_dense({"output": response.output, "meta": response.meta})
            out.append((text, b"".join(a.tobytes() for a in arrays) if arrays else None, None))
            continue
        if signature not in dumped:
            text, arrays = dumps_dense({"output": response.output, "meta": {}})
            dumped[signature] = text, [a.dtype for a in arrays]
        text, dtypes = dumped[signature]
        copies = {key: np.array(value, dtype=dtype, order="C")
                  for (key, value), dtype in zip(response.output.items(), dtypes, strict=True)}
        out.append((text, b"".join(a.tobytes() for a in copies.values()), copies))
    return out


@dataclass
class LedgerSummary:
    """What a ledger holds (for ``bbzo ledger show``).

    Attributes:
        requests: distinct requests recorded.
        queries: model queries of the answered requests (a ``classify`` request of n inputs
            is n; 1 per row written before schema v3).
        answered / errors / pending: rows by status; ``pending`` were sent but never answered
            (the run died mid-call; they may have been charged).
        cache_hits: answers served from the ledger without contacting the target.
        attempts: target calls over all requests, retries included.
        prompt_tokens / completion_tokens: tokens of answered requests.
        cost: US dollars of answered requests.
        latency_p50_s / latency_p90_s / latency_p99_s: call wall time of answered requests.
        kinds: request kind -> number of requests.
        targets: target id -> {requests, answered, queries, cache_hits, tokens, cost}.
        recent_errors: up to 5 distinct recent error messages.
    """

    requests: int = 0
    queries: int = 0
    answered: int = 0
    errors: int = 0
    pending: int = 0
    cache_hits: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_p50_s: float | None = None
    latency_p90_s: float | None = None
    latency_p99_s: float | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    targets: dict[str, dict] = field(default_factory=dict)
    recent_errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Ledger:
    """A run's SQLite record of requests and answers.

    Args:
        path: the SQLite file (created with its parent folder if missing).
        readonly: open an existing ledger for reading only (``open_readonly``): nothing is
            created or changed, and a file that is not a bbzo ledger is refused.
        store_payloads: also store the raw bytes of dense requests' arrays (images...); by
            default a dense request's row holds its key, JSON with dtype/shape and the answer.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False,
                 store_payloads: bool = False) -> None:
        self.path = Path(path)
        self.store_payloads = bool(store_payloads)
        self.redactions = 0
        self._fsync = True  # PRAGMA synchronous is FULL (else NORMAL)
        if readonly:
            self._lock = threading.Lock()
            self._db = open_readonly(self.path)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(queries)")}
            self._queries_sql = "queries" if "queries" in have else "1"  # before v3: 1 per row
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                       timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InputError(f"ledger {self.path} has schema v{version}; this bbzo reads "
                                 f"v{SCHEMA_VERSION}: upgrade bbzo")
            self._db.execute(_SCHEMA)
            self._add_columns()
            self._queries_sql = "queries"
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as err:
            raise InputError(f"{self.path} is not a usable bbzo ledger: {err}") from None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._db.close()

    def _add_columns(self) -> None:
        """Give an older table the columns it lacks: v2's BLOBs (NULL in old rows: plain
        JSON), v3's ``queries`` (1 in old rows)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(queries)")}
        for column, declaration in _ADDED_COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE queries ADD COLUMN {column} {declaration}")

    @contextmanager
    def _write(self, fsync: bool = True) -> Iterator[None]:
        """One committed transaction, under the lock; ``fsync``: synced to the disk on commit
        (else committed to the WAL file only, which survives a killed process)."""
        with self._lock:
            if fsync != self._fsync:
                self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
                self._fsync = fsync
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def answers(self, keys: list[str]) -> dict[str, Response]:
        """Stored answers (``ok`` rows) for ``keys``, marked cached and free."""
        rows: list[tuple[str, str, bytes | None]] = []
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows += self._db.execute(
                    f"SELECT key, response, response_arrays FROM queries WHERE status = 'ok'"
                    f" AND key IN ({marks})", chunk).fetchall()
        found: dict[str, Response] = {}
        for key, text, data in rows:
            answer = loads_dense(text, data)
            found[key] = Response(output=answer["output"], meta=answer["meta"], cached=True)
        return found

    def note_hits(self, counts: Mapping[str, int]) -> None:
        """Count answers served from the ledger (key -> times served). Bookkeeping, not
        answers: committed to the WAL without an fsync of its own."""
        with self._write(fsync=False):
            self._db.executemany("UPDATE queries SET hits = hits + ? WHERE key = ?",
                                 [(n, key) for key, n in counts.items()])

    def begin(self, target_id: str, items: list[tuple[str, Request]]) -> None:
        """Write ``pending`` rows for requests about to be sent (committed on return)."""
        now = time.time()
        target = self._clean(target_id)
        texts = self._clean_many([request.to_json() for _, request in items])
        rows = [(key, target, request.kind, request.queries, text, self._array_bytes(request),
                 now, now) for (key, request), text in zip(items, texts, strict=True)]
        with self._write():
            self._db.executemany(
                "INSERT INTO queries (key, target, kind, queries, request, request_arrays, status,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET"
                " status = 'pending', updated_at = excluded.updated_at WHERE status != 'ok'", rows)

    def record(self, target_id: str, items: list[tuple[str, Request, Response]],
               attempts: int, *, fsync: bool = True) -> list[Response]:
        """Commit answers (``ok`` rows); return them as a resumed run would read them back.

        ``fsync``: the commit reaches the disk before return (safe against a power cut); with
        False it reaches the WAL file, which a killed process keeps (the query layer's choice
        for local targets, whose answers cost no money)."""
        now = time.time()
        responses = [response for _, _, response in items]
        try:
            dumped = _dump_answers(responses)
        except InputError as err:
            raise TargetError(f"target {target_id} returned an answer that cannot be stored "
                              f"({err})") from None
        n = len(items)
        cleaned = self._clean_many([target_id] + [text for text, _, _ in dumped]
                                   + [request.to_json() for _, request, _ in items])
        target, answers, requests = cleaned[0], cleaned[1:n + 1], cleaned[n + 1:]
        rows, out = [], []
        for (key, request, response), (raw, data, output), text, request_text in zip(
                items, dumped, answers, requests, strict=True):
            if output is None or text != raw:  # not a flat array answer, or redacted
                answer = loads_dense(text, data)
                output, meta = answer["output"], answer["meta"]
            else:
                meta = {}
            usage = response.usage
            rows.append((key, target, request.kind, request.queries, request_text,
                         request.array_bytes() if self.store_payloads else None, text, data,
                         usage.prompt_tokens, usage.completion_tokens, response.cost,
                         response.latency_s, attempts, now, now))
            out.append(Response(output=output, usage=Usage(usage.prompt_tokens,
                                                           usage.completion_tokens),
                                cost=response.cost, latency_s=response.latency_s, meta=meta))
        with self._write(fsync):
            self._db.executemany(
                "INSERT INTO queries (key, target, kind, queries, request, request_arrays,"
                " status, response, response_arrays, error, prompt_tokens, completion_tokens,"
                " cost, latency_s, attempts, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 'ok', ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET status = 'ok', queries = excluded.queries,"
                " response = excluded.response,"
                " response_arrays = excluded.response_arrays,"
                " error = NULL, prompt_tokens = excluded.prompt_tokens,"
                " completion_tokens = excluded.completion_tokens, cost = excluded.cost,"
                " latency_s = excluded.latency_s, attempts = attempts + excluded.attempts,"
                " updated_at = excluded.updated_at", rows)
        return out

    def record_error(self, target_id: str, items: list[tuple[str, Request]], error: str,
                     attempts: int) -> None:
        """Record requests that failed for good (not answers: a resume sends them again).
        A row already ``ok`` keeps its answer."""
        now = time.time()
        error = self._clean(error)
        target = self._clean(target_id)
        texts = self._clean_many([request.to_json() for _, request in items])
        rows = [(key, target, request.kind, request.queries, text, self._array_bytes(request),
                 error, attempts, now, now)
                for (key, request), text in zip(items, texts, strict=True)]
        with self._write():
            self._db.executemany(
                "INSERT INTO queries (key, target, kind, queries, request, request_arrays,"
                " status, error, attempts, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 'error', ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET status = 'error', error = excluded.error,"
                " attempts = attempts + excluded.attempts, updated_at = excluded.updated_at"
                " WHERE status != 'ok'", rows)

    def summary(self) -> LedgerSummary:
        """Counts, tokens, cost and latency percentiles over the whole ledger."""
        with self._lock:
            db = self._db
            out = LedgerSummary()
            for status, n in db.execute("SELECT status, COUNT(*) FROM queries GROUP BY status"):
                setattr(out, {"ok": "answered", "error": "errors", "pending": "pending"}[status],
                        n)
            out.requests = out.answered + out.errors + out.pending
            hits, attempts = db.execute(
                "SELECT COALESCE(SUM(hits), 0), COALESCE(SUM(attempts), 0) FROM queries"
            ).fetchone()
            out.cache_hits, out.attempts = hits, attempts
            pt, ct, cost, queries = db.execute(
                "SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),"
                f" COALESCE(SUM(cost), 0.0), COALESCE(SUM({self._queries_sql}), 0) FROM queries"
                " WHERE status = 'ok'").fetchone()
            out.prompt_tokens, out.completion_tokens, out.cost = pt, ct, cost
            out.queries = queries
            latencies = [row[0] for row in db.execute(
                "SELECT latency_s FROM queries WHERE status = 'ok' AND latency_s IS NOT NULL"
                " ORDER BY latency_s")]
            out.kinds = dict(db.execute("SELECT kind, COUNT(*) FROM queries GROUP BY kind"
                                        " ORDER BY kind"))
            out.targets = {
                target: {"requests": n, "answered": ok, "queries": queries, "cache_hits": hits,
                         "tokens": tokens, "cost": cost}
                for target, n, ok, queries, hits, tokens, cost in db.execute(
                    "SELECT target, COUNT(*), SUM(status = 'ok'),"
                    f" COALESCE(SUM(CASE WHEN status = 'ok' THEN {self._queries_sql} END), 0),"
                    " SUM(hits),"
                    " SUM(prompt_tokens + completion_tokens), SUM(cost) FROM queries"
                    " GROUP BY target ORDER BY target")}
            out.recent_errors = [row[0] for row in db.execute(
                "SELECT error FROM queries WHERE status = 'error' GROUP BY error"
                " ORDER BY MAX(updated_at) DESC LIMIT 5")]
        out.latency_p50_s = _percentile(latencies, 0.50)
        out.latency_p90_s = _percentile(latencies, 0.90)
        out.latency_p99_s = _percentile(latencies, 0.99)
        return out

    def _array_bytes(self, request: Request) -> bytes | None:
        """What ``request_arrays`` holds for ``request``: its arrays' bytes if stored, else None."""
        return request.array_bytes() if self.store_payloads else None

    def _clean_many(self, texts: list[str]) -> list[str]:
        """``_clean`` of each text. Each distinct text is cleaned once (the rows of a dense batch
        share their JSON), in one pass over the newline-joined distinct texts (JSON text holds
        no raw newline); one by one if a text has a newline or a mask crossed one."""
        distinct = list(dict.fromkeys(texts))
        joined = "\n".join(distinct)
        if len(distinct) > 1 and joined.count("\n") == len(distinct) - 1:
            clean, n = redact_text(joined)
            parts = clean.split("\n")
            if len(parts) == len(distinct):
                self._note_redactions(n)
                cleaned = dict(zip(distinct, parts, strict=True))
                return [cleaned[text] for text in texts]
        cleaned = {text: self._clean(text) for text in distinct}
        return [cleaned[text] for text in texts]

    def _clean(self, text: str) -> str:
        clean, n = redact_text(text)
        self._note_redactions(n)
        return clean

    def _note_redactions(self, n: int) -> None:
        if n:
            if not self.redactions:
                log.warning("ledger %s: redacted %d secret-looking string(s) before writing",
                            self.path, n)
            self.redactions += n
