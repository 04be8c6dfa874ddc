"""Each batch store operation, written once for both databases: a function of an open transaction
(`schema.Sql`) that the backend began and commits (or rolls back, if the function raises). The
backends differ only where the statements must: PostgreSQL claims with `FOR UPDATE SKIP LOCKED` and
locks rows explicitly (SQLite's `BEGIN IMMEDIATE` serialises every writer already).

What holds, on either database:
- a batch and all its lines are written together or not at all (`insert_batch`);
- a line is claimed by one worker at a time: a claim takes lines that are `running` with a lease that
  ran out (a worker that died) and then `pending` ones, and sets a new lease (`claim`);
- a line is finished once: only by the worker holding it while it is `running`, and its batch's
  counts, cost and tokens change in the same transaction (`finish_line`);
- a batch is finalized once, its output and error files written in the transaction that sets its final
  status and deletes its lines, and their answers from an upstream's Batch API (`finalize_batch`).

Lock order on PostgreSQL, so that no two transactions ever wait for each other: a transaction locks at
most one batch row, before any line; lines are locked in (batch id, line number) order; a claim locks
no batch and waits for no lock at all (it skips locked lines).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.batches.lines import BatchLine
from gateway.batches.render import exhausted_output, unfinished_output
from gateway.batches.rows import BatchRow, ClaimedLine, FileRow, LineKey, Usage, new_file_id
from gateway.batches.schema import BATCH_COLUMNS, FILE_COLUMNS, LINE_COLUMNS, Sql
from gateway.batches.usage import line_usage

_SELECT_FILE = f"SELECT {', '.join(FILE_COLUMNS)} FROM batch_files"
_SELECT_BATCH = f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches"
# A claim's first pick: lines whose worker died (a running line whose lease ran out) that may be tried
# again, oldest batch first (few: at most what the workers hold).
_ABANDONED = """
SELECT l.batch_id, l.line_no, b.tenant, b.team, b.key_id
FROM batch_lines l JOIN batches b ON b.id = l.batch_id
WHERE l.state = 'running' AND l.lease_until <= ? AND l.attempts < ? AND b.status = 'in_progress'
ORDER BY b.seq, l.line_no
LIMIT ?
"""
# Then: in-progress batches with a pending line, oldest first, and their pending lines in order.
_WITH_PENDING = """
SELECT id, tenant, team, key_id FROM batches b WHERE status = 'in_progress'
AND EXISTS (SELECT 1 FROM batch_lines l WHERE l.batch_id = b.id AND l.state = 'pending')
ORDER BY seq
LIMIT ?
"""
_PENDING = """
SELECT l.line_no FROM batch_lines l WHERE l.batch_id = ? AND l.state = 'pending' ORDER BY l.line_no LIMIT ?
"""
_TAKE = """
UPDATE batch_lines SET state = 'running', claimed_by = ?, lease_until = ?, attempts = attempts + 1
WHERE batch_id = ? AND line_no = ?
RETURNING custom_id, method, url, body, attempts
"""
# The batches `finalize_batch` may have something to do for: cancelling ones; in-progress ones whose
# lines are all finished, whose time is up, or with a line no worker could finish in its attempts.
_FINALIZE_CANDIDATES = """
SELECT id FROM batches b WHERE status = 'cancelling' OR (status = 'in_progress' AND (
    expires_at <= ?
    OR (NOT EXISTS (SELECT 1 FROM batch_lines l WHERE l.batch_id = b.id AND l.state = 'pending')
        AND NOT EXISTS (SELECT 1 FROM batch_lines l WHERE l.batch_id = b.id AND l.state = 'running'))
    OR EXISTS (SELECT 1 FROM batch_lines l WHERE l.batch_id = b.id AND l.state = 'running'
               AND l.lease_until <= ? AND l.attempts >= ?)))
ORDER BY seq
LIMIT ?
"""


def dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def file_of(row: Sequence[Any]) -> FileRow:
    file_id, tenant, purpose, filename, size, created_at, expires_at = row
    return FileRow(file_id, tenant, purpose, filename, int(size), int(created_at), _int(expires_at))


def batch_of(row: Sequence[Any]) -> BatchRow:
    values = dict(zip(BATCH_COLUMNS, row, strict=True))
    usage = Usage(*(int(values.pop(name)) for name in Usage.__dataclass_fields__))
    for name in ("metadata", "errors"):
        values[name] = None if values[name] is None else orjson.loads(values[name])
    for name in ("created_at", "total", "completed", "failed"):
        values[name] = int(values[name])
    for name in BATCH_COLUMNS:
        if name.endswith("_at") and name != "created_at":
            values[name] = _int(values[name])
    values["cost_usd"] = float(values["cost_usd"])
    return BatchRow(**values, usage=usage)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def batch_values(row: BatchRow) -> tuple[object, ...]:
    """The row's values in BATCH_COLUMNS order."""
    values: dict[str, object] = {
        name: getattr(row, name) for name in BATCH_COLUMNS if name not in Usage.__dataclass_fields__
    }
    values["metadata"] = None if row.metadata is None else dumps(row.metadata)
    values["errors"] = None if row.errors is None else dumps(row.errors)
    values.update(zip(Usage.__dataclass_fields__, row.usage.values(), strict=True))
    return tuple(values[name] for name in BATCH_COLUMNS)


def _lock_batch(sql: Sql, batch_id: str, tenant: str | None = None) -> tuple[str, int | None, str] | None:
    """The batch's status, expiry and tenant, its row locked until the transaction ends (PostgreSQL; on SQLite
    the immediate transaction holds the whole file); None: no such batch (of that tenant)."""
    statement = "SELECT status, expires_at, tenant FROM batches WHERE id = ?"
    params: tuple[object, ...] = (batch_id,)
    if tenant is not None:
        statement += " AND tenant = ?"
        params += (tenant,)
    found = sql.rows(statement + (" FOR UPDATE" if sql.postgres else ""), params)
    return (found[0][0], _int(found[0][1]), found[0][2]) if found else None


def _lock_lines(sql: Sql, batch_id: str, condition: str, params: Sequence[object] = ()) -> None:
    """Lock the batch's lines meeting `condition`, in line order (PostgreSQL; SQLite needs nothing)."""
    if sql.postgres:
        sql.rows(
            f"SELECT 1 FROM batch_lines WHERE batch_id = ? AND {condition} ORDER BY line_no FOR UPDATE",
            (batch_id, *params),
        )


# Files.


def insert_file(sql: Sql, row: FileRow, content: bytes) -> None:
    sql.run(
        f"INSERT INTO batch_files ({', '.join(FILE_COLUMNS)}, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (row.id, row.tenant, row.purpose, row.filename, row.bytes, row.created_at, row.expires_at, content),
    )


def select_file(sql: Sql, tenant: str, file_id: str) -> FileRow | None:
    found = sql.rows(f"{_SELECT_FILE} WHERE id = ? AND tenant = ?", (file_id, tenant))
    return file_of(found[0]) if found else None


def select_content(sql: Sql, tenant: str, file_id: str) -> bytes | None:
    found = sql.rows("SELECT content FROM batch_files WHERE id = ? AND tenant = ?", (file_id, tenant))
    return bytes(found[0][0]) if found else None


def delete_file(sql: Sql, tenant: str, file_id: str) -> bool:
    return sql.run("DELETE FROM batch_files WHERE id = ? AND tenant = ?", (file_id, tenant)) == 1


# Batches.


def insert_batch(sql: Sql, row: BatchRow, lines: Sequence[BatchLine]) -> None:
    """The batch and its lines (all `pending`); ValueError when its input file is not the tenant's
    `batch` file."""
    found = sql.rows(
        "SELECT 1 FROM batch_files WHERE id = ? AND tenant = ? AND purpose = 'batch'",
        (row.input_file_id, row.tenant),
    )
    if not found:
        raise ValueError(f"no input file {row.input_file_id} with purpose 'batch'")
    placeholders = ", ".join("?" * len(BATCH_COLUMNS))
    sql.run(f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}) VALUES ({placeholders})", batch_values(row))
    sql.insert_many(
        "batch_lines",
        LINE_COLUMNS,
        (
            (row.id, line.line_no, line.custom_id, line.method, line.url, dumps(line.body), "pending")
            for line in lines
        ),
    )


def select_batch(sql: Sql, tenant: str, batch_id: str) -> BatchRow | None:
    found = sql.rows(f"{_SELECT_BATCH} WHERE id = ? AND tenant = ?", (batch_id, tenant))
    return batch_of(found[0]) if found else None


def select_batches(sql: Sql, tenant: str, after: str | None, limit: int) -> list[BatchRow]:
    """The tenant's batches, newest first, from the one created before `after` (none: `after` is not
    the tenant's batch)."""
    if after is None:
        found = sql.rows(f"{_SELECT_BATCH} WHERE tenant = ? ORDER BY seq DESC LIMIT ?", (tenant, limit))
    else:
        found = sql.rows(
            f"{_SELECT_BATCH} WHERE tenant = ?"
            " AND seq < (SELECT seq FROM batches WHERE id = ? AND tenant = ?) ORDER BY seq DESC LIMIT ?",
            (tenant, after, tenant, limit),
        )
    return [batch_of(row) for row in found]


def cancel_batch(sql: Sql, tenant: str, batch_id: str, now: float) -> BatchRow | None:
    """An open batch becomes `cancelling` and its pending lines `cancelled` (running ones may still
    finish); any other batch is left as it is. The batch as it is now (None: not the tenant's)."""
    locked = _lock_batch(sql, batch_id, tenant)
    if locked is None:
        return None
    if locked[0] in ("validating", "in_progress"):
        sql.run(
            "UPDATE batches SET status = 'cancelling', cancelling_at = ? WHERE id = ?", (int(now), batch_id)
        )
        _lock_lines(sql, batch_id, "state = 'pending'")
        sql.run(
            "UPDATE batch_lines SET state = 'cancelled' WHERE batch_id = ? AND state = 'pending'", (batch_id,)
        )
    return select_batch(sql, tenant, batch_id)


# Lines.


def claim(
    sql: Sql, worker_id: str, limit: int, lease_until: float, now: float, max_attempts: int
) -> list[ClaimedLine]:
    """Up to `limit` claimable lines: first those whose worker died (their lease ran out, fewer than
    `max_attempts` claims so far), then pending ones, each oldest batch first and in line order. Each
    becomes `running` for `worker_id` until `lease_until`, its attempts counted. On PostgreSQL the lines
    are picked `FOR UPDATE SKIP LOCKED`: one another claim is taking is left to it, never waited for."""
    skip_locked = " FOR UPDATE OF l SKIP LOCKED" if sql.postgres else ""
    # (batch id, line number, tenant, team, key id) of each line to take.
    picked = sql.rows(_ABANDONED + skip_locked, (now, max_attempts, limit))
    if len(picked) < limit:
        for batch_id, tenant, team, key_id in sql.rows(_WITH_PENDING, (limit - len(picked),)):
            pending = sql.rows(_PENDING + skip_locked, (batch_id, limit - len(picked)))
            picked += [(batch_id, line_no, tenant, team, key_id) for (line_no,) in pending]
            if len(picked) >= limit:
                break
    claimed = []
    for batch_id, line_no, tenant, team, key_id in picked:
        ((custom_id, method, url, body, attempts),) = sql.rows(
            _TAKE, (worker_id, lease_until, batch_id, line_no)
        )
        claimed.append(
            ClaimedLine(
                batch_id,
                int(line_no),
                tenant,
                custom_id,
                method,
                url,
                orjson.loads(body),
                attempts,
                lease_until,
                team,
                key_id,
            )
        )
    return claimed


def extend_lease(sql: Sql, worker_id: str, keys: Sequence[LineKey], lease_until: float) -> list[LineKey]:
    """Move the lease of each line `worker_id` still holds (`running`, claimed by it) to `lease_until`;
    those lines, in (batch id, line number) order."""
    held: list[LineKey] = []
    for batch_id, line_no in sorted(set(keys)):
        changed = sql.run(
            "UPDATE batch_lines SET lease_until = ?"
            " WHERE batch_id = ? AND line_no = ? AND state = 'running' AND claimed_by = ?",
            (lease_until, batch_id, line_no, worker_id),
        )
        if changed:
            held.append((batch_id, line_no))
    return held


def output_text(output: Mapping[str, Any] | bytes | str) -> tuple[str, Usage]:
    """A line's output object as one line of JSON, and the tokens it used; ValueError when it is not a
    JSON object."""
    if isinstance(output, bytes | str):
        try:
            output = orjson.loads(output)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"a line's output must be JSON: {exc}") from None
    if not isinstance(output, Mapping):
        raise ValueError("a line's output must be a JSON object")
    return dumps(output), line_usage(output)


def finish_line(
    sql: Sql,
    worker_id: str,
    key: LineKey,
    state: str,
    output: str,
    usage: Usage,
    cost_usd: float,
    now: float,
) -> bool:
    """Record a line's result if `worker_id` holds it (`running`, claimed by it), and count it in its
    batch; whether it did (False: the line was finished, reclaimed, cancelled or is gone; nothing
    changed)."""
    batch_id, line_no = key
    if _lock_batch(sql, batch_id) is None:
        return False
    changed = sql.run(
        "UPDATE batch_lines SET state = ?, response = ?, cost_usd = ?, finished_at = ?, lease_until = NULL"
        " WHERE batch_id = ? AND line_no = ? AND state = 'running' AND claimed_by = ?",
        (state, output, cost_usd, now, batch_id, line_no, worker_id),
    )
    if not changed:
        return False
    sql.run(
        "UPDATE batches SET completed = completed + ?, failed = failed + ?, cost_usd = cost_usd + ?,"
        " input_tokens = input_tokens + ?, cached_tokens = cached_tokens + ?,"
        " output_tokens = output_tokens + ?, reasoning_tokens = reasoning_tokens + ?,"
        " total_tokens = total_tokens + ? WHERE id = ?",
        (int(state == "done"), int(state == "failed"), cost_usd, *usage.values(), batch_id),
    )
    return True


# Finalization.


def finalize_candidates(sql: Sql, now: float, max_attempts: int, limit: int) -> list[str]:
    return [row[0] for row in sql.rows(_FINALIZE_CANDIDATES, (now, now, max_attempts, limit))]


def finalize_batch(sql: Sql, batch_id: str, now: float, max_attempts: int) -> bool:
    """Finish the batch if its time has come: `completed` when all its lines are done or failed,
    `expired` when its window ended first (its unfinished lines cancelled), `cancelled` when it was
    cancelling and no worker still holds a live lease on one of its lines. Lines whose every attempt
    was lost are failed first. Writes the output file (the done lines' outputs, in line order) and the
    error file (the failed lines', and an error line for each cancelled one), neither when it would be
    empty, then deletes the lines. Whether the batch was finalized."""
    locked = _lock_batch(sql, batch_id)
    if locked is None:
        return False
    status, expires_at, tenant = locked
    if status == "in_progress":
        _fail_exhausted(sql, batch_id, now, max_attempts)
        if not _has_lines(sql, batch_id, "pending") and not _has_lines(sql, batch_id, "running"):
            final = "completed"
        elif expires_at is not None and expires_at <= now:
            final = "expired"
            _cancel_lines(sql, batch_id, "state IN ('pending', 'running')")
        else:
            return False
    elif status == "cancelling":
        # Lines of workers that died while the batch was cancelling: nobody will finish them.
        _cancel_lines(
            sql, batch_id, "(state = 'pending' OR (state = 'running' AND lease_until <= ?))", (now,)
        )
        if _has_lines(sql, batch_id, "running"):
            return False
        final = "cancelled"
    else:
        return False
    output_id = _write_output(sql, tenant, batch_id, now)
    error_id = _write_errors(sql, tenant, batch_id, now, final)
    at = int(now)
    ended = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[final]
    sql.run(
        f"UPDATE batches SET status = ?, finalizing_at = ?, {ended} = ?, output_file_id = ?,"
        " error_file_id = ? WHERE id = ?",
        (final, at, at, output_id, error_id, batch_id),
    )
    sql.run("DELETE FROM batch_lines WHERE batch_id = ?", (batch_id,))
    # Its lines' answers from an upstream's Batch API, kept until now should a line run again.
    sql.run("DELETE FROM upstream_lines WHERE line_key LIKE ?", (f"{batch_id}:%",))
    return True


def _has_lines(sql: Sql, batch_id: str, state: str) -> bool:
    return bool(
        sql.rows("SELECT 1 FROM batch_lines WHERE batch_id = ? AND state = ? LIMIT 1", (batch_id, state))
    )


def _fail_exhausted(sql: Sql, batch_id: str, now: float, max_attempts: int) -> None:
    condition = "state = 'running' AND lease_until <= ? AND attempts >= ?"
    _lock_lines(sql, batch_id, condition, (now, max_attempts))
    exhausted = sql.rows(
        f"SELECT line_no, custom_id, attempts FROM batch_lines WHERE batch_id = ? AND {condition}",
        (batch_id, now, max_attempts),
    )
    for line_no, custom_id, attempts in exhausted:
        sql.run(
            "UPDATE batch_lines SET state = 'failed', response = ?, finished_at = ?, lease_until = NULL"
            " WHERE batch_id = ? AND line_no = ?",
            (dumps(exhausted_output(custom_id, attempts)), now, batch_id, line_no),
        )
    if exhausted:
        sql.run("UPDATE batches SET failed = failed + ? WHERE id = ?", (len(exhausted), batch_id))


def _cancel_lines(sql: Sql, batch_id: str, condition: str, params: Sequence[object] = ()) -> None:
    _lock_lines(sql, batch_id, condition, params)
    sql.run(
        f"UPDATE batch_lines SET state = 'cancelled', lease_until = NULL WHERE batch_id = ? AND {condition}",
        (batch_id, *params),
    )


def _write_output(sql: Sql, tenant: str, batch_id: str, now: float) -> str | None:
    found = sql.rows(
        "SELECT response FROM batch_lines WHERE batch_id = ? AND state = 'done' ORDER BY line_no",
        (batch_id,),
    )
    return _new_output_file(sql, tenant, f"{batch_id}_output.jsonl", [row[0] for row in found], now)


def _write_errors(sql: Sql, tenant: str, batch_id: str, now: float, final: str) -> str | None:
    found = sql.rows(
        "SELECT custom_id, state, response FROM batch_lines"
        " WHERE batch_id = ? AND state IN ('failed', 'cancelled') ORDER BY line_no",
        (batch_id,),
    )
    outputs = [
        response if state == "failed" else dumps(unfinished_output(custom_id, final))
        for custom_id, state, response in found
    ]
    return _new_output_file(sql, tenant, f"{batch_id}_error.jsonl", outputs, now)


def _new_output_file(sql: Sql, tenant: str, filename: str, outputs: list[str], now: float) -> str | None:
    if not outputs:
        return None
    content = "".join(f"{output}\n" for output in outputs).encode()
    row = FileRow(new_file_id(), tenant, "batch_output", filename, len(content), int(now), None)
    insert_file(sql, row, content)
    return row.id
