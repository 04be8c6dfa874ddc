"""One error tree for everything the gateway reports to a client.

    GatewayError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error
    │   └── BodyTooLarge              413 invalid_request_error
    ├── AuthenticationFailed          401 authentication_error
    ├── PermissionDenied              403 permission_error
    ├── NotFound                      404 invalid_request_error (code not_found)
    ├── ModelNotFound                 404 invalid_request_error (code model_not_found)
    ├── RateLimited                   429 rate_limit_error (the gateway's limits, or an upstream's)
    │   └── BudgetExceeded            429 insufficient_quota (code budget_exceeded)
    │   └── LoadShed                  429 rate_limit_error (code load_shed: a lower class shed under load)
    ├── CountersDown                  503 server_error (limits_unavailable: Redis away, policy fails closed)
    ├── Overloaded                    503 server_error (capacity_exceeded: a deployment's queue is full)
    └── UpstreamError                 502 upstream_error
        ├── UpstreamRejected          the upstream's own 4xx, passed on with its status
        ├── UpstreamUnavailable       503 (no deployment available, circuits open, missing provider key)
        └── UpstreamTimeout           504

Each error renders itself as OpenAI's error JSON. Messages are written for the caller and never
carry a stack trace, an upstream credential or an upstream's raw body.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    status: int = 500
    error_type: str = "server_error"
    code: str | None = None
    # Where the request was routed before it failed, when it got that far (for response headers).
    rule: str | None = None
    route: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.error_type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )

    @property
    def retryable(self) -> bool:
        return False


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class BodyTooLarge(InvalidRequest):
    status = 413
    code: str | None = "request_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "authentication_error"
    code: str | None = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    error_type = "permission_error"
    code: str | None = "permission_denied"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code: str | None = "not_found"


class Conflict(GatewayError):
    status = 409
    error_type = "invalid_request_error"
    code: str | None = "conflict"


class ModelNotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code: str | None = "model_not_found"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    code: str | None = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return True


class UpstreamError(GatewayError):
    """The upstream failed in a way worth retrying elsewhere (connect error, 5xx, broken body)."""

    status = 502
    error_type = "upstream_error"
    code: str | None = "bad_gateway"

    @property
    def retryable(self) -> bool:
        return True


class UpstreamRejected(UpstreamError):
    """The upstream refused this request (4xx other than 429): retrying will not help."""

    def __init__(self, message: str, *, status: int, error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.code = None

    @property
    def retryable(self) -> bool:
        return False


class UpstreamUnavailable(UpstreamError):
    status = 503
    code: str | None = "upstream_unavailable"


class CountersDown(GatewayError):
    """Budgets or rate limits cannot be counted (Redis away) and the policy says to refuse meanwhile."""

    status = 503
    error_type = "server_error"
    code: str | None = "limits_unavailable"

    @property
    def retryable(self) -> bool:
        return True


class Overloaded(GatewayError):
    """A deployment runs all it may and its queue is full (or the wait ran out): elsewhere or later."""

    status = 503
    error_type = "server_error"
    code: str | None = "capacity_exceeded"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1.0, retry_after)

    @property
    def retryable(self) -> bool:
        return True


class UpstreamTimeout(UpstreamError):
    status = 504
    code: str | None = "upstream_timeout"


class BudgetExceeded(RateLimited):
    """A spend budget of the caller's team or key is used up until the period resets."""

    error_type = "insufficient_quota"
    code: str | None = "budget_exceeded"


class LoadShed(RateLimited):
    """Admission control shed a request of a lower class: its route would miss its objective now, and
    the policy sheds that class rather than queue it. `retry_after` is the predicted wait."""

    code: str | None = "load_shed"


class UpstreamRateLimited(RateLimited):
    """The upstream answered 429; retried elsewhere, and passed on if nothing else answers."""
