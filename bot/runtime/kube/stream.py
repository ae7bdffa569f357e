"""Commands in a workspace pod over the exec WebSocket.

The API server speaks the ``v4.channel.k8s.io`` subprotocol: the first byte of
every binary message is the channel (0 stdin, 1 stdout, 2 stderr, 3 the final
v1 Status, 4 terminal resize as ``{"Width": …, "Height": …}``). See
https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#connect-get-pod-v1
and the kubelet's remotecommand package.

``kubernetes.stream.stream`` swaps ``ApiClient.request`` for the duration of the
call, which is not safe while other threads use the same client; the runtime
therefore keeps a separate client for exec and connects under a lock (only the
handshake is inside it; the streams then run in parallel).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream
from kubernetes.stream.ws_client import (
    ERROR_CHANNEL,
    RESIZE_CHANNEL,
    STDERR_CHANNEL,
    STDOUT_CHANNEL,
    WSClient,
)
from websocket import WebSocketException

from bot.errors import TemporaryError
from bot.runtime import base
from bot.runtime.kube import api
from bot.runtime.kube.manifests import CONTAINER

log = logging.getLogger(__name__)

#: Exit code reported when the runtime could not start the command at all
#: (the shell's "cannot execute"); the Status message is appended to the output.
CANNOT_EXECUTE = 126
#: Stdin is sent in messages of this size, reading output in between.
_STDIN_CHUNK = 64 * 1024


def exit_code(status: bytes) -> tuple[int, str]:
    """The exit code and message of the Status sent on channel 3."""
    if not status:
        return CANNOT_EXECUTE, "the exec stream ended without a status"
    try:
        parsed = json.loads(status)
    except ValueError:
        return CANNOT_EXECUTE, status.decode(errors="replace")
    if parsed.get("status") == "Success":
        return 0, ""
    for cause in (parsed.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", CANNOT_EXECUTE)), ""
    return CANNOT_EXECUTE, str(parsed.get("message") or "exec failed")


class Connector:
    """Opens exec streams with its own API client (see the module docstring)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._core = client.CoreV1Api(client.ApiClient(api_client.configuration))
        self._lock = threading.Lock()

    def open(
        self,
        namespace: str,
        pod: str,
        argv: Sequence[str],
        *,
        tty: bool,
        stdin: bool = False,
    ) -> WSClient:
        """A terminal always has stdin; a plain command only when asked."""
        try:
            with self._lock:
                ws: WSClient = stream(
                    self._core.connect_get_namespaced_pod_exec,
                    pod,
                    namespace,
                    command=list(argv),
                    container=CONTAINER,
                    stdin=tty or stdin,
                    stdout=True,
                    stderr=not tty,  # the API server refuses stderr with a TTY
                    tty=tty,
                    binary=True,
                    _preload_content=False,
                )
        except ApiException as err:
            raise api.translate(err, "create", "pods/exec", namespace) from err
        return ws


def run(ws: WSClient, timeout: float, stdin: bytes = b"") -> base.ExecResult:
    """Send ``stdin``, then wait for a non-interactive command; stdout and
    stderr in arrival order.

    The ``v4.channel.k8s.io`` protocol has no way to close stdin, so a command
    fed this way must know how much to read (``head -c N``)."""
    deadline = time.monotonic() + timeout
    try:
        for start in range(0, len(stdin), _STDIN_CHUNK):
            ws.write_stdin(stdin[start : start + _STDIN_CHUNK])
            ws.update(timeout=0)
        while ws.is_open():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TemporaryError(f"command did not finish within {timeout:g} s")
            ws.update(timeout=min(remaining, 5.0))
        status = ws.read_channel(ERROR_CHANNEL) or b""
        output = ws.read_all()
    except WebSocketException as err:
        raise TemporaryError(f"exec stream broke: {err}") from err
    finally:
        ws.close()

    code, message = exit_code(status)
    if message:
        output += message.encode() + b"\n"
    return base.ExecResult(exit_code=code, output=bytes(output))


class KubeTerminal(base.Terminal):
    """A TTY exec session. One thread may read while another writes."""

    def __init__(self, ws: WSClient) -> None:
        self._ws = ws

    def read(self, timeout: float | None = None) -> bytes:
        """Output as it comes; ``b""`` once the process has ended.

        Raises :class:`TimeoutError` when ``timeout`` passes without output."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            data = self._take()
            if data:
                return data
            if not self._ws.is_open():
                return b""
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no terminal output")
            try:
                self._ws.update(timeout=remaining)
            except WebSocketException:
                self._ws.close()

    def _take(self) -> bytes:
        data: Any = b""
        for channel in (STDOUT_CHANNEL, STDERR_CHANNEL):
            chunk = self._ws.read_channel(channel, timeout=0)
            if chunk:
                data += chunk
        return bytes(data)

    def write(self, data: bytes) -> None:
        try:
            self._ws.write_stdin(bytes(data))
        except (WebSocketException, OSError):
            # The session has ended; the reader sees b"" and winds down.
            log.debug("write to a closed terminal")

    def resize(self, rows: int, cols: int) -> None:
        message = json.dumps({"Width": cols, "Height": rows}).encode()
        try:
            self._ws.write_channel(RESIZE_CHANNEL, message)
        except (WebSocketException, OSError):
            log.debug("resize of a closed terminal")

    def close(self) -> None:
        self._ws.close()

    @property
    def exit_code(self) -> int | None:
        """The process's exit code once the stream has ended."""
        if self._ws.is_open():
            return None
        return exit_code(self._ws.read_channel(ERROR_CHANNEL) or b"")[0]
