"""The one seam to the Kubernetes API: every call goes through :meth:`Api.call`.

It turns the client's exceptions into the bot's error tree, by what the caller
should do next: 403 means the bot's RBAC lacks a permission (the message names
it), 5xx, 429 and connection trouble are temporary, 404 and 409 are answers the
caller asked to receive as ``None``. Responses come back as plain dicts, the
same shape the templates produce.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from bot.errors import ConfigError, PermanentError, TemporaryError

log = logging.getLogger(__name__)

_HANDSHAKE = re.compile(r"Handshake status (\d{3})")


def _message(err: ApiException) -> str:
    """The ``message`` of the Status object the API server answered with."""
    try:
        status = json.loads(err.body or "")
    except (TypeError, ValueError):
        return str(err.reason or "")
    return str(status.get("message") or err.reason or "")


def _retry_after(err: ApiException) -> float | None:
    headers = err.headers or {}
    try:
        return float(headers.get("Retry-After", ""))
    except ValueError:
        return None


def translate(
    err: ApiException, verb: str, resource: str, namespace: str | None
) -> Exception:
    """Our error for a failed call ``verb resource`` in ``namespace``."""
    status = err.status or 0
    if status == 0:  # raised by the WebSocket client, which keeps only a string
        match = _HANDSHAKE.search(str(err.reason))
        status = int(match.group(1)) if match else 0
    where = f" in namespace {namespace}" if namespace else ""
    detail = _message(err)
    log.warning(
        "kubernetes api call failed",
        extra={
            "verb": verb,
            "resource": resource,
            "namespace": namespace,
            "status": status,
        },
    )

    if status == 403:
        return ConfigError(
            f"the bot's service account may not {verb} {resource}{where}; "
            f"grant it in the bot's ClusterRole ({detail})"
        )
    if status == 401:
        return ConfigError(
            f"the Kubernetes API refused the bot's credentials ({detail})"
        )
    if status in (400, 422):
        return ConfigError(f"Kubernetes rejected {verb} {resource}{where}: {detail}")
    if status == 429 or status >= 500 or status == 0:
        return TemporaryError(
            f"Kubernetes API unavailable for {verb} {resource}{where}: {detail}",
            retry_after=_retry_after(err),
        )
    if status in (404, 409):
        # Unexpected here (the caller did not ask for it): the object changed
        # under us, and the next attempt will see the new state.
        return TemporaryError(f"{verb} {resource}{where}: {detail}")
    return PermanentError(f"Kubernetes refused {verb} {resource}{where}: {detail}")


class Api:
    """Calls client methods and answers with dicts or our errors."""

    def call(
        self,
        verb: str,
        resource: str,
        method: Callable[..., Any],
        *args: Any,
        namespace: str | None = None,
        missing_ok: bool = False,
        exists_ok: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any] | None:
        """Run ``method(*args, **kwargs)``; ``verb`` and ``resource`` (RBAC words)
        name the call in errors. Returns ``None`` on 404 when ``missing_ok`` and
        on 409 when ``exists_ok``."""
        try:
            response = method(*args, _preload_content=False, **kwargs)
        except ApiException as err:
            if err.status == 404 and missing_ok:
                return None
            if err.status == 409 and exists_ok:
                return None
            raise translate(err, verb, resource, namespace) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            log.warning(
                "kubernetes api unreachable",
                extra={"verb": verb, "resource": resource, "error": str(err)},
            )
            raise TemporaryError(f"Kubernetes API unreachable: {err}") from err

        data = response.data
        return json.loads(data) if data else {}
