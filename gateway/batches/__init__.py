"""The durable state of OpenAI's Batch API (`/v1/files` with purpose `batch`, `/v1/batches`): uploaded
files, batches, and each batch's lines as workers claim, run and finish them. SQLite in the state
directory by default (`sqlite.py`), PostgreSQL when `GATEWAY_DATABASE_URL` names one (`postgres.py`);
`backends.open_batch_store` picks one. The async store both backends share is `store.py`, the
operations they run `operations.py`, the tables `schema.py`; reading an input file is `lines.py`,
rendering OpenAI's objects `render.py`. No HTTP and no request path here: the routes and the worker
call this package."""
