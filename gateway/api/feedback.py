"""`POST /v1/feedback`: a client rates (0 bad … 1 good) or labels one of its team's answered requests,
named by the `x-request-id` the gateway returned. Kept beside the request in the ledger's database."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.access import Caller, ServicesDep
from gateway.errors import NotFound, UpstreamUnavailable
from gateway.ledger.feedback import Feedback
from gateway.ledger.store import LedgerUnavailable

router = APIRouter()


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(min_length=1, max_length=200)]
    # 0 = bad, 1 = good: thumbs are 0 or 1, five stars are (stars - 1) / 4.
    rating: Annotated[float | None, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = None
    label: Annotated[str | None, Field(min_length=1, max_length=64)] = None
    comment: Annotated[str | None, Field(max_length=2000)] = None

    @model_validator(mode="after")
    def rated_or_labelled(self) -> FeedbackBody:
        if self.rating is None and self.label is None:
            raise ValueError("give a rating (0 to 1), a label, or both")
        return self


@router.post("/v1/feedback")
async def give_feedback(
    principal: Caller, body: FeedbackBody, request: Request, services: ServicesDep
) -> dict[str, Any]:
    ledger = services.ledger
    assert ledger is not None
    feedback = Feedback(
        id=f"fb-{uuid.uuid4().hex}",
        request_id=body.request_id,
        at=time.time(),
        # An admin may rate any team's request; everyone else only their own team's.
        team=None if principal.role == "admin" else principal.team,
        key_id=principal.key_id,
        rating=body.rating,
        label=body.label,
        comment=body.comment,
    )
    try:
        kept = await asyncio.to_thread(ledger.store.add_feedback, feedback)
        if not kept:  # answered a moment ago: its record may still be in this replica's spool
            await ledger.drain()
            kept = await asyncio.to_thread(ledger.store.add_feedback, feedback)
    except LedgerUnavailable as exc:
        raise UpstreamUnavailable(f"The ledger's database is unavailable, try again: {exc}") from exc
    if not kept:
        raise NotFound(
            f"No request {body.request_id!r} of this key's team is in the ledger.", param="request_id"
        )
    return {
        "id": feedback.id,
        "object": "feedback",
        "request_id": feedback.request_id,
        "created_at": int(feedback.at),
        "rating": feedback.rating,
        "label": feedback.label,
    }
