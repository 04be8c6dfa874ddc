"""Stored responses of the Responses API (`store: true`, `previous_response_id`, `GET`/`DELETE
/v1/responses/{id}`), kept where the deployment keeps its other state: SQLite in the state directory by
default (`sqlite.py`), PostgreSQL when `GATEWAY_DATABASE_URL` names one (`postgres.py`). What both
share is in `store.py` and `schema.py`; `backends.open_response_store` picks one. The contract they
fulfil (`StoredResponse`, `ResponseStore`) is `gateway.inbound.response_store`'s."""
