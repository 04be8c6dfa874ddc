"""A worker to kill: `python -m tests.batches.crash_worker sqlite|postgresql LOCATION` claims lines as
worker "doomed" (for an hour's lease) and finishes them as fast as it can, printing `done N` after each
finish that counted (and `twice N` should a second finish of the same line ever count), until there is
nothing left to claim (`drained`) or it is killed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.batches.store import ThreadedBatchStore

WORKER = "doomed"
COST = 0.25


def output(custom_id: str) -> dict[str, object]:
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": f"req_{custom_id}",
            "body": {"usage": {"total_tokens": 1}},
        },
        "error": None,
    }


def open_store(kind: str, location: str) -> ThreadedBatchStore:
    if kind == "sqlite":
        from gateway.batches.sqlite import SqliteBatchStore

        return SqliteBatchStore(Path(location))
    from gateway.batches.postgres import PostgresBatchStore

    return PostgresBatchStore(location)


async def main(kind: str, location: str) -> None:
    store = open_store(kind, location)
    while lines := await store.claim(WORKER, 10, 3600):
        for line in lines:
            for which in ("done", "twice"):
                if await store.finish_line(
                    WORKER, line.batch_id, line.line_no, "done", output(line.custom_id), COST
                ):
                    print(f"{which} {line.line_no}", flush=True)
    print("drained", flush=True)
    await store.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
