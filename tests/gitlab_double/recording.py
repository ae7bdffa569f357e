"""What the double was asked, and the failures it was told to answer with.

Every request that reaches the server is recorded after it is answered, faulted
ones included. Credentials never are: headers are not kept at all, and fields
that carry secrets in bodies (hook tokens, client secrets, PKCE verifiers,
refresh tokens) are replaced by ``"[REDACTED]"``.

Faults are deterministic: ``every=N`` fails the 1st, (N+1)th, (2N+1)th matching
request; ``rate`` draws from a ``random.Random`` seeded at injection time.
Several statuses take turns, one per failure. ``Retry-After`` goes with 429 and
503 answers, the two that RFC 6585 and RFC 9110 give it to.

Each request's arrival is kept as ``at`` (``time.monotonic()``), so a test can
tell how long a client waited before asking again.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Response, jsonify, request

SECRET_FIELDS = {
    "token",
    "signing_token",
    "client_secret",
    "code_verifier",
    "refresh_token",
    "access_token",
    "password",
}
REASONS = {
    429: "429 Too Many Requests",
    500: "500 Internal Server Error",
    502: "502 Bad Gateway",
    503: "503 Service Unavailable",
    504: "504 Gateway Timeout",
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    form: dict[str, str] | None
    status: int
    user: str | None
    faulted: bool = False
    #: ``time.monotonic()`` when the request arrived.
    at: float = 0.0
    #: The Retry-After seconds a faulted answer carried, if any.
    retry_after: float | None = None


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "[REDACTED]" if k in SECRET_FIELDS else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


@dataclass
class Fault:
    statuses: tuple[int, ...]
    paths: re.Pattern[str]
    rate: float | None
    every: int | None
    retry_after: float | None
    times: int | None
    rng: random.Random
    seen: int = 0
    fired: int = 0

    def fires(self, path: str) -> bool:
        if not self.paths.search(path):
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.seen += 1
        if self.every is not None:
            hit = (self.seen - 1) % self.every == 0
        else:
            hit = self.rng.random() < (self.rate or 0.0)
        self.fired += hit
        return hit

    @property
    def status(self) -> int:
        """The status of the latest failure: the statuses take turns."""
        return self.statuses[(self.fired - 1) % len(self.statuses)]


@dataclass
class Recorder:
    """The request log and the active fault plan, shared by all threads."""

    requests: list[RecordedRequest] = field(default_factory=list)
    fault: Fault | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check_fault(self) -> Response | None:
        """A ``before_request`` hook: answer with the injected failure, if due."""
        request.environ["gitlab_double.at"] = time.monotonic()
        with self.lock:
            fault = self.fault
            if fault is None or not fault.fires(request.path):
                return None
            status = fault.status
        request.environ["gitlab_double.faulted"] = True
        response = jsonify({"message": REASONS.get(status, str(status))})
        response.status_code = status
        if fault.retry_after is not None and status in (429, 503):
            seconds = int(fault.retry_after) if fault.retry_after >= 1 else 0
            response.headers["Retry-After"] = str(seconds)
            request.environ["gitlab_double.retry_after"] = float(seconds)
        if status == 429:
            # docs.gitlab.com/administration/settings/user_and_ip_rate_limits
            reset = int(time.time() + (fault.retry_after or 60))
            response.headers.update(
                {
                    "RateLimit-Name": "throttle_authenticated_api",
                    "RateLimit-Limit": "60",
                    "RateLimit-Observed": "61",
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": str(reset),
                }
            )
        return response

    def record(self, response: Response) -> Response:
        """An ``after_request`` hook: log the answered request."""
        body = request.get_json(silent=True) if request.is_json else None
        form = redact(dict(request.form.items())) if request.form else None
        entry = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.args.items()),
            json=redact(body),
            form=form,
            status=response.status_code,
            user=request.environ.get("gitlab_double.user"),
            faulted=bool(request.environ.get("gitlab_double.faulted")),
            at=request.environ.get("gitlab_double.at", time.monotonic()),
            retry_after=request.environ.get("gitlab_double.retry_after"),
        )
        with self.lock:
            self.requests.append(entry)
        return response
