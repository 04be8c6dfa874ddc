"""`/dashboard/policies`: the admin page for the routing policy, in the dashboard's session. It shows the live
version and its source, validates an edited text (compiled with its golden cases, with the diff against the
live policy) without changing anything, applies it, rolls back to an earlier version, and explains the
decision for a sample request. Admin keys only: a finance session sees spend, never this page.

Forms post with the SameSite=Strict session cookie, which a browser never sends from another site; a post
whose Origin names another site is refused as well.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.api.access import ServicesDep
from gateway.api.dashboard import SessionCookie, page, signed_in, to_sign_in
from gateway.identity.auth import Principal
from gateway.inbound.chat_completions import parse_chat_request
from gateway.policy.compile import PolicyError
from gateway.policy.diff import policy_diff
from gateway.services import Services
from gateway.wire import Caller, ChatRequest

router = APIRouter(prefix="/dashboard/policies")
MAX_FORM_BYTES = 1_000_000
SAMPLE = '{"messages": [{"role": "user", "content": "Write a Python function that reverses a list."}]}'
Form = dict[str, list[str]]


def _admin_session(
    request: Request, services: Services, session: str | None, *, posting: bool
) -> Principal | Response:
    """The signed-in admin, or the page to answer instead: sign in first, or 403 for other roles and
    for posts from another site."""
    principal = signed_in(services, session)
    if principal is None:
        return to_sign_in()
    if principal.role != "admin" or (posting and not _same_origin(request)):
        return _forbidden(principal)
    return principal


@router.get("", response_model=None)
async def policies_page(request: Request, services: ServicesDep, session: SessionCookie = None) -> Response:
    principal = _admin_session(request, services, session, posting=False)
    if isinstance(principal, Response):
        return principal
    applied = request.query_params.get("applied")
    return _render(services, principal, _live_source(services), SAMPLE, applied=applied)


@router.post("", response_model=None)
async def policies_action(request: Request, services: ServicesDep, session: SessionCookie = None) -> Response:
    principal = _admin_session(request, services, session, posting=True)
    if isinstance(principal, Response):
        return principal
    form = await _form(request)
    if form is None:
        return page("error.html", status=413, principal=principal, message="The form is larger than 1 MB.")
    action = _field(form, "action")
    text = _field(form, "text") or _live_source(services)
    sample = _field(form, "sample") or SAMPLE
    author = f"dashboard, key {principal.key_id}" if principal.key_id else "dashboard (open gateway)"
    store = services.policies
    assert store is not None and services.history is not None
    if action == "validate":
        return _render(services, principal, text, sample, check=await _check(services, text))
    if action == "apply":
        try:
            version = await store.apply(text, author, write_file=True)
        except PolicyError as error:
            refused = {"ok": False, "problems": error.problems, "applied": False}
            return _render(services, principal, text, sample, check=refused, status=400)
        return RedirectResponse(f"/dashboard/policies?applied={version}", status_code=303)
    if action == "rollback":
        version_text = _field(form, "version")
        source = services.history.source_of(store.name, int(version_text)) if version_text.isdigit() else None
        if source is None:
            message = f"There is no version {version_text!r} to roll back to."
            return page("error.html", status=404, principal=principal, message=message)
        try:
            applied = await store.apply(source, f"{author} (rollback to v{version_text})", write_file=True)
        except PolicyError as error:  # e.g. a deployment it names is gone
            refused = {"ok": False, "problems": error.problems, "applied": False}
            return _render(services, principal, source, sample, check=refused, status=400)
        return RedirectResponse(f"/dashboard/policies?applied={applied}", status_code=303)
    if action == "explain":
        return _render(services, principal, text, sample, explained=await _explain(services, sample))
    return page("error.html", status=400, principal=principal, message="Unknown action.")


async def _check(services: Services, text: str) -> dict[str, Any]:
    store = services.policies
    assert store is not None
    try:
        compiled = await store.check(text)
    except PolicyError as error:
        return {"ok": False, "problems": error.problems}
    return {
        "ok": True,
        "rules": len(compiled.rules),
        "golden": [case.name for case in compiled.policy.tests],
        "diff": policy_diff(store.current.policy, compiled.policy),
    }


async def _explain(services: Services, sample: str) -> dict[str, Any]:
    try:
        body = parse_chat_request(sample.encode(), default_model="auto")
    except Exception as error:  # the sample is the admin's text: say what is wrong with it
        return {"error": str(getattr(error, "message", error))}
    return await services.path.decide.explain(
        ChatRequest(body=body, request_id="dashboard-explain"), Caller()
    )


def _render(
    services: Services,
    principal: Principal,
    text: str,
    sample: str,
    *,
    check: dict[str, Any] | None = None,
    explained: dict[str, Any] | None = None,
    applied: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    store = services.policies
    assert store is not None and services.history is not None
    return page(
        "policies.html",
        status=status,
        principal=principal,
        live={"name": store.name, "version": store.version, "rules": len(store.current.rules)},
        last_error=store.last_error,
        versions=list(reversed(services.history.versions(store.name))),
        text=text,
        sample=sample,
        check=check,
        explained=None if explained is None else json.dumps(explained, indent=2, default=str),
        applied=applied if applied and applied.isdigit() else None,
    )


def _live_source(services: Services) -> str:
    store = services.policies
    assert store is not None and services.history is not None
    return services.history.source_of(store.name, store.version) or store.path.read_text()


async def _form(request: Request) -> Form | None:
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        return None
    return parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)


def _field(form: Form, name: str) -> str:
    return (form.get(name) or [""])[0]


def _same_origin(request: Request) -> bool:
    """Browsers say where a request comes from in Sec-Fetch-Site (Origin is `null` under this page's
    no-referrer policy); other clients carry neither header and still need the session cookie."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def _forbidden(principal: Principal) -> HTMLResponse:
    message = "Policies are for admin keys, from this site's own pages; this request is neither."
    return page("error.html", status=403, principal=principal, message=message)
