"""Dashboard sign-in sessions: a key is typed once into the sign-in form, never put in a URL; the browser
then holds a signed, expiring cookie naming the key's id (HttpOnly, SameSite=Strict, Secure over HTTPS).

The cookie is signed with itsdangerous and `GATEWAY_SESSION_SECRET` (a random secret per process when
unset: sessions then end with a restart and do not cross replicas). Each request re-checks that the key
is still active and may read the dashboard, so revoking a key ends its sessions at once.
"""

from __future__ import annotations

import secrets

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "gateway_session"
SESSION_SECONDS = 8 * 3600


class Sessions:
    def __init__(self, secret: str | None = None, max_age: int = SESSION_SECONDS) -> None:
        self._signer = URLSafeTimedSerializer(secret or secrets.token_urlsafe(32), salt="gateway-dashboard")
        self.max_age = max_age

    def issue(self, key_id: str) -> str:
        return self._signer.dumps({"key": key_id})

    def key_of(self, cookie: str | None) -> str | None:
        """The key id of a valid, unexpired session cookie; None for anything else."""
        if not cookie:
            return None
        try:
            data = self._signer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # also expired (SignatureExpired is a BadSignature)
            return None
        key = data.get("key") if isinstance(data, dict) else None
        return key if isinstance(key, str) else None
