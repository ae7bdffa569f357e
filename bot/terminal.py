"""The join page and the browser terminal behind it.

``GET /w/<project>/<mr>`` is the join link from the MR comment. It grants
nothing by itself: it sends strangers to sign in, re-checks the person's access
on GitLab, provisions their account (:mod:`bot.provision`) and serves a page
with xterm.js. The page opens ``/w/<project>/<mr>/tty``, a WebSocket that checks
the same things again (a role changed since the join is applied to the account
first) and attaches to a shell started *for this connection* as
the signed-in person's own account; the account comes from the server-side
session, never from the client, so nobody can attach to someone else's shell.
Closing the tab ends that shell.

Cross-site use is refused: the WebSocket requires an ``Origin`` equal to the
bot's public URL (browsers always send it, and a foreign page cannot forge it).

Wire format on the socket: the client sends JSON text frames,
``{"type": "input", "data": "..."}`` or ``{"type": "resize", "rows": R,
"cols": C}``; the server sends the terminal's output as binary frames.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from bot import accounts, audit, auth, provision
from bot.errors import BotError, PermanentError
from bot.runtime.base import Terminal, WorkspaceKey

log = logging.getLogger(__name__)
bp = Blueprint("terminal", __name__)
sock = Sock()

ASSETS = Path(__file__).resolve().parent.parent / "node_modules" / "@xterm"
STATIC = Path(__file__).resolve().parent / "static"
#: The only files the asset route serves.
ASSET_FILES = {
    "xterm.js": ASSETS / "xterm" / "lib",
    "xterm.css": ASSETS / "xterm" / "css",
    "addon-fit.js": ASSETS / "addon-fit" / "lib",
    "terminal.js": STATIC,
}
_ASSET_NAMES = {
    "xterm.js": "xterm.js",
    "xterm.css": "xterm.css",
    "addon-fit.js": "addon-fit.js",
    "terminal.js": "terminal.js",
}


def init_app(app: Any) -> None:
    app.register_blueprint(bp)
    sock.init_app(app)
    app.after_request(_security_headers)


def _security_headers(response: Any) -> Any:
    """No inline script, no framing, no sniffing: the terminal page types into a
    shell, so clickjacking or injected script would be typing for the user.
    A workspace endpoint's answer (:mod:`bot.endpoint_proxy`) keeps its own."""
    if g.get("rwbot_proxied"):
        return response
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _deps() -> tuple[Any, Any, Any, Any]:
    c = current_app.config
    return c["RWBOT_SETTINGS"], c["RWBOT_STORE"], c["RWBOT_GITLAB"], c["RWBOT_RUNTIME"]


def _refusal(err: provision.Refused | PermanentError) -> ResponseReturnValue:
    status = err.kind.value if isinstance(err, provision.Refused) else 500
    return render_template(
        "refused.html.j2", title="You cannot join", reason=err.reason
    ), status


@bp.get("/w/<int:project_id>/<int:mr_iid>")
def join(project_id: int, mr_iid: int) -> ResponseReturnValue:
    person = auth.current_person()
    if person is None:
        return redirect(url_for("auth.login", next=request.path))
    settings, store, gitlab, runtime = _deps()
    key = WorkspaceKey(project_id, mr_iid)
    try:
        joined = provision.join(settings, store, gitlab, runtime, person, key)
    except (provision.Refused, PermanentError) as err:
        audit.record(
            store, project_id, mr_iid, person.username, "join", "refused", err.reason
        )
        return _refusal(err)
    ws = provision.workspace(store, key)
    return render_template(
        "terminal.html.j2",
        project_path=ws.project_path,
        mr_iid=mr_iid,
        mr_url=ws.mr_url,
        username=person.username,
        linux_name=joined.linux_name,
        role=joined.role.value,
        socket_path=f"/w/{project_id}/{mr_iid}/tty",
    )


@bp.get("/assets/<name>")
def asset(name: str) -> ResponseReturnValue:
    folder = ASSET_FILES.get(name)
    if folder is None:
        abort(404)
    return send_from_directory(folder, _ASSET_NAMES[name], max_age=3600)


@bp.before_app_request
def _refuse_cross_site_sockets() -> ResponseReturnValue | None:
    """Refuse a WebSocket handshake from another site before it is accepted."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return None
    settings = current_app.config["RWBOT_SETTINGS"]
    if not same_origin(request.headers.get("Origin"), settings.public_url):
        log.warning("cross-site websocket refused", extra={"path": request.path})
        return "cross-site WebSocket refused", 403
    if auth.current_person() is None:
        return "sign in first", 401
    return None


def same_origin(origin: str | None, public_url: str) -> bool:
    if not origin:
        return False
    a, b = urlsplit(origin), urlsplit(public_url)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


@sock.route("/w/<int:project_id>/<int:mr_iid>/tty", bp=bp)  # type: ignore[untyped-decorator]
def tty(ws: Any, project_id: int, mr_iid: int) -> None:
    person = auth.current_person()
    if person is None:  # _refuse_cross_site_sockets answered 401 already
        return
    settings, store, gitlab, runtime = _deps()
    key = WorkspaceKey(project_id, mr_iid)
    try:
        # The same decision as the join page; a changed role is applied to
        # the account before its shell starts (see provision.connect).
        joined = provision.connect(settings, store, gitlab, runtime, person, key)
        workspace = provision.workspace(store, key)
        rows, cols = _size(request.args.get("rows"), request.args.get("cols"))
        session_id = secrets.token_hex(16)
        terminal = runtime.open_terminal(
            key,
            accounts.shell_argv(joined.linux_name, session=session_id),
            rows=rows,
            cols=cols,
        )
    except BotError as err:
        reason = getattr(err, "reason", "the terminal could not be opened")
        ws.close(reason=1008, message=reason[:120])
        return
    log.info(
        "terminal opened", extra={"workspace": key.slug(), "user": person.username}
    )
    provision.seen(settings, store, workspace, person.id, connected=+1)
    try:
        _pump(
            ws, terminal, lambda: provision.seen(settings, store, workspace, person.id)
        )
    finally:
        provision.seen(settings, store, workspace, person.id, connected=-1)
        terminal.close()
        try:
            runtime.exec(key, accounts.end_argv(session_id))
        except BotError as err:
            log.warning("could not end a terminal session", extra={"error": str(err)})
        log.info("terminal closed", extra={"workspace": key.slug()})


#: Seconds between "still connected" marks while a terminal is open.
HEARTBEAT = 30.0


def _pump(ws: Any, terminal: Terminal, heartbeat: Callable[[], None]) -> None:
    """Copy output to the socket in a thread; input and resizes in this one."""
    done = threading.Event()
    last_beat = time.monotonic()

    def output() -> None:
        # Ends when the shell ends (EOF) or the browser went away.
        with contextlib.suppress(ConnectionClosed, OSError):
            while not done.is_set():
                try:
                    data = terminal.read(timeout=0.5)
                except TimeoutError:
                    continue
                if not data:
                    break
                ws.send(data)
        done.set()
        with contextlib.suppress(ConnectionClosed, OSError):
            ws.close(reason=1000, message="the shell ended")

    reader = threading.Thread(target=output, name="tty-output", daemon=True)
    reader.start()
    try:
        while not done.is_set():
            message = ws.receive(timeout=0.5)
            if message is not None:
                _handle(message, terminal)
            if time.monotonic() - last_beat > HEARTBEAT:
                last_beat = time.monotonic()
                with contextlib.suppress(BotError):
                    heartbeat()
    except (ConnectionClosed, OSError):
        pass  # the tab was closed
    finally:
        done.set()
        reader.join(timeout=2)


def _handle(message: str | bytes, terminal: Terminal) -> None:
    try:
        data = json.loads(message)
    except ValueError:
        return
    if not isinstance(data, dict):
        return
    if data.get("type") == "input" and isinstance(data.get("data"), str):
        terminal.write(data["data"].encode())
    elif data.get("type") == "resize":
        rows, cols = _size(data.get("rows"), data.get("cols"))
        terminal.resize(rows, cols)


def _size(rows: object, cols: object) -> tuple[int, int]:
    def clamp(value: object, default: int, top: int) -> int:
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            return default
        try:
            number = int(value)
        except ValueError:
            return default
        return max(1, min(top, number))

    return clamp(rows, 24, 500), clamp(cols, 80, 1000)
