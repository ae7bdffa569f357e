"""The join flow refuses what it must, without a browser.

Cases: the join link alone grants nothing (redirect to sign-in); a forged or
replayed OAuth ``state`` and a reused authorization code are refused; sign-in
asks for a fresh ``state``, an S256 PKCE challenge and only ``openid read_user``
(and the GitLab double refuses a sign-in without the challenge); the session
cookie is HttpOnly and SameSite, and Secure behind https; a session identifier
planted before sign-in does not survive it; the terminal WebSocket refuses
another site's Origin and a missing session; a member who never opened the join
link gets no shell; open redirects through ``next`` are not followed; closing
the terminal ends the user's shell.

Access that changes after a join (one decision for the join page, the socket
and the periodic sweep): a Developer lowered to Reporter who reconnects the
socket cannot write the checkout, and their old shell ends; the sweep ends a
lowered writer's live session and locks a blocked user, who is then refused at
the join page, while an invited Guest keeps their shell.
"""

import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import websocket

from bot.app import create_app
from bot.store import Grant
from tests import live, services
from tests.gitlab_double import DEVELOPER, GUEST, REPORTER
from tests.live import (
    cookie_header,
    join_path,
    read_to_end,
    read_until,
    signed_in,
    terminal,
    type_in,
    ws_url,
)


@pytest.fixture
def workspace(stack):
    project = stack.gitlab.add_project("team/app")
    author = stack.gitlab.add_user("author")
    stack.gitlab.set_member(project, author, DEVELOPER)
    mr = stack.gitlab.open_mr(project, "feature", {"a.txt": "a\n"}, author=author)
    stack.deliver(stack.gitlab.mr_hook(mr, "open"))
    stack.settle_ready(mr)
    return project, mr


def test_the_join_link_alone_grants_nothing(stack, workspace):
    project, mr = workspace
    r = requests.get(
        stack.url + join_path(project, mr), allow_redirects=False, timeout=10
    )
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/auth/login")


def session_of(stack, http):
    """The bot's session as the app itself reads it (signed, so only decoded)."""
    serializer = stack.app.session_interface.get_signing_serializer(stack.app)
    return serializer.loads(http.cookies["session"])


def authorize_query(response):
    assert response.status_code == 302
    return parse_qs(urlsplit(response.headers["Location"]).query)


def test_a_forged_state_is_refused(stack, workspace):
    project, mr = workspace
    user = stack.gitlab.add_user("dana")
    stack.gitlab.set_member(project, user, DEVELOPER)
    stack.gitlab.login_as(user)
    http = requests.Session()
    r = http.get(stack.url + "/auth/login", allow_redirects=False, timeout=10)
    # A real code for this user, but the callback carries a state it never got.
    to_gitlab = requests.get(r.headers["Location"], allow_redirects=False, timeout=10)
    code = authorize_query(to_gitlab)
    r = http.get(
        stack.url + "/auth/callback",
        params={"code": code["code"][0], "state": "forged"},
        timeout=10,
    )
    assert r.status_code == 400
    assert "person" not in session_of(stack, http)
    r = http.get(stack.url + join_path(project, mr), allow_redirects=False, timeout=10)
    assert r.headers["Location"].startswith("/auth/login")


def test_a_reused_authorization_code_is_refused_under_a_fresh_state(stack):
    user = stack.gitlab.add_user("dana")
    stack.gitlab.login_as(user)
    first = requests.Session()
    r = first.get(stack.url + "/auth/login", allow_redirects=False, timeout=10)
    callback = requests.get(r.headers["Location"], allow_redirects=False, timeout=10)
    used_code = authorize_query(callback)["code"][0]
    back = first.get(callback.headers["Location"], allow_redirects=False, timeout=10)
    assert back.status_code == 302 and "person" in session_of(stack, first)

    second = requests.Session()
    r = second.get(stack.url + "/auth/login", allow_redirects=False, timeout=10)
    fresh_state = authorize_query(r)["state"][0]
    r = second.get(
        stack.url + "/auth/callback",
        params={"code": used_code, "state": fresh_state},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 400
    assert "person" not in session_of(stack, second)


def test_sign_in_asks_for_state_pkce_s256_and_only_openid_read_user(stack):
    http = requests.Session()
    login = stack.url + "/auth/login"
    one = authorize_query(http.get(login, allow_redirects=False, timeout=10))
    two = authorize_query(http.get(login, allow_redirects=False, timeout=10))

    assert one["scope"] == ["openid read_user"]
    assert one["code_challenge_method"] == ["S256"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", one["code_challenge"][0])
    assert len(one["state"][0]) >= 20
    # Fresh per attempt.
    assert one["state"] != two["state"]
    assert one["code_challenge"] != two["code_challenge"]


def test_the_double_refuses_a_sign_in_without_pkce(stack):
    """What makes every other sign-in in these tests proof that PKCE is used."""
    stack.gitlab.login_as(stack.gitlab.add_user("dana"))
    r = requests.get(stack.url + "/auth/login", allow_redirects=False, timeout=10)
    parts = urlsplit(r.headers["Location"])
    query = {k: v for k, v in parse_qs(parts.query).items() if "challenge" not in k}
    r = requests.get(
        f"{parts.scheme}://{parts.netloc}{parts.path}",
        params={k: v[0] for k, v in query.items()},
        allow_redirects=False,
        timeout=10,
    )
    answer = authorize_query(r)
    assert answer["error"] == ["invalid_request"] and "code" not in answer


def test_the_session_cookie_is_httponly_samesite_and_secure_behind_https(stack):
    r = requests.get(stack.url + "/auth/login", allow_redirects=False, timeout=10)
    flags = [f.strip().lower() for f in r.headers["Set-Cookie"].split(";")]
    assert "httponly" in flags and "samesite=lax" in flags
    assert "secure" not in flags  # a plain-http install could not send it back

    settings = stack.settings.with_overrides(public_url="https://bot.example")
    app = create_app(settings, store=stack.store, gitlab=stack.client)
    r = app.test_client().get("/auth/login")
    flags = [f.strip().lower() for f in r.headers["Set-Cookie"].split(";")]
    assert "secure" in flags and "httponly" in flags and "samesite=lax" in flags


def test_a_replayed_callback_is_refused(stack, workspace):
    project, _mr = workspace
    user = stack.gitlab.add_user("dana")
    stack.gitlab.set_member(project, user, DEVELOPER)
    stack.gitlab.login_as(user)
    http = requests.Session()
    r = http.get(stack.url + "/auth/login", allow_redirects=False, timeout=10)
    authorize = r.headers["Location"]
    r = requests.get(authorize, allow_redirects=False, timeout=10)
    callback = r.headers["Location"]
    assert http.get(callback, allow_redirects=False, timeout=10).status_code == 302
    # The same state and code again, even with the same browser session:
    assert http.get(callback, allow_redirects=False, timeout=10).status_code == 400
    # ... or from another browser that never started a sign-in:
    assert requests.get(callback, allow_redirects=False, timeout=10).status_code == 400


def test_a_session_planted_before_sign_in_does_not_survive_it(stack, workspace):
    project, mr = workspace
    user = stack.gitlab.add_user("dana")
    stack.gitlab.set_member(project, user, DEVELOPER)
    stack.gitlab.login_as(user)
    http = requests.Session()
    http.get(stack.url + "/auth/login", allow_redirects=False, timeout=10)
    planted = http.cookies["session"]
    http.get(stack.url + join_path(project, mr), timeout=30)
    assert http.cookies["session"] != planted
    # The attacker's copy of the planted cookie is not signed in.
    attacker = requests.Session()
    attacker.cookies.set("session", planted)
    r = attacker.get(
        stack.url + join_path(project, mr), allow_redirects=False, timeout=10
    )
    assert r.status_code == 302


def test_next_never_leads_off_site(stack, workspace):
    _project, _mr = workspace
    user = stack.gitlab.add_user("dana")
    stack.gitlab.login_as(user)
    http = requests.Session()
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        r = http.get(
            stack.url + "/auth/login",
            params={"next": target},
            timeout=30,
            allow_redirects=True,
        )
        assert r.url.startswith(stack.url), r.url


def test_the_terminal_socket_refuses_another_sites_origin(stack, workspace):
    project, mr = workspace
    user = stack.gitlab.add_user("dana")
    stack.gitlab.set_member(project, user, DEVELOPER)
    http = signed_in(stack, project, mr, user)
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        websocket.create_connection(
            ws_url(stack, project, mr),
            origin="http://evil.example",
            cookie=cookie_header(http),
            timeout=10,
        )
    assert err.value.status_code == 403


def test_the_terminal_socket_requires_a_session(stack, workspace):
    project, mr = workspace
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        websocket.create_connection(
            ws_url(stack, project, mr), origin=stack.url, timeout=10
        )
    assert err.value.status_code == 401


def test_closing_the_terminal_ends_the_shell(stack, workspace):
    project, mr = workspace
    user = stack.gitlab.add_user("dana")
    stack.gitlab.set_member(project, user, DEVELOPER)
    http = signed_in(stack, project, mr, user)
    sock = websocket.create_connection(
        ws_url(stack, project, mr) + "?rows=30&cols=100",
        origin=stack.url,
        cookie=cookie_header(http),
        timeout=30,
    )
    sock.send(
        json.dumps(
            {"type": "input", "data": "sleep 1000 & stty size; echo R$((6*7))\n"}
        )
    )
    out = read_until(sock, "R42")
    assert "30 100" in out
    sock.send(json.dumps({"type": "resize", "rows": 50, "cols": 160}))
    sock.send(json.dumps({"type": "input", "data": "stty size\n"}))
    assert "50 160" in read_until(sock, "50 160")
    uid = str(100000 + user["id"])
    assert uid in stack.run_in(mr, "ps", "-eo", "uid=")

    sock.close()

    services.wait_for(
        lambda: uid not in stack.run_in(mr, "ps", "-eo", "uid="),
        timeout=30,
        what="the user's processes to end",
    )


def test_a_member_who_never_joined_gets_no_shell(stack, workspace):
    project, mr = workspace
    user = stack.gitlab.add_user("dana")
    stack.gitlab.set_member(project, user, DEVELOPER)
    http = signed_in(stack, project, mr, user)
    other_mr = stack.gitlab.open_mr(project, "other", {"b.txt": "b\n"})
    stack.deliver(stack.gitlab.mr_hook(other_mr, "open"))
    stack.settle()
    # Signed in, a member, but never opened the join link of this workspace.
    sock = websocket.create_connection(
        ws_url(stack, project, other_mr),
        origin=stack.url,
        cookie=cookie_header(http),
        timeout=30,
    )
    opcode, frame = sock.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert frame.data[:2] == (1008).to_bytes(2, "big")
    assert b"join link" in frame.data


def test_a_lowered_developer_reconnects_read_only_and_their_old_shell_ends(
    stack, workspace
):
    project, mr = workspace
    user = stack.gitlab.add_user("dana")
    stack.gitlab.set_member(project, user, DEVELOPER)
    http = signed_in(stack, project, mr, user)

    old = live.open_terminal(stack, project, mr, http)
    type_in(old, "echo w > a.txt && echo WROTE$((1+1))\n")
    read_until(old, "WROTE2")

    stack.gitlab.set_member(project, user, REPORTER)
    new = live.open_terminal(stack, project, mr, http)  # no join page in between
    read_to_end(old)  # its shell carried the write group
    type_in(new, "echo x > a.txt; echo RC=$?\n")
    out = read_until(new, "RC=1")
    assert "denied" in out
    assert stack.run_in(mr, "cat", "/workspace/team/app/a.txt") == "w\n"
    new.close()


def test_the_sweep_follows_lowered_blocked_and_invited_access(stack, workspace):
    project, mr = workspace
    writer = stack.gitlab.add_user("wes")
    blocked = stack.gitlab.add_user("bea")
    guest = stack.gitlab.add_user("gus")
    for user in (writer, blocked):
        stack.gitlab.set_member(project, user, DEVELOPER)
    stack.gitlab.set_member(project, guest, GUEST)
    with stack.store.session() as session:
        session.add(
            Grant(
                workspace_id=stack.row(mr).id,
                gitlab_user_id=guest["id"],
                username="gus",
                role="read",
                granted_by="author",
            )
        )
    writer_sock = terminal(stack, project, mr, writer)
    guest_sock = terminal(stack, project, mr, guest)
    blocked_http = signed_in(stack, project, mr, blocked)

    stack.gitlab.set_member(project, writer, REPORTER)
    stack.gitlab.set_user_state(blocked, "blocked")
    stack.reconciler.resync()

    read_to_end(writer_sock)
    type_in(guest_sock, "echo STILL$((2+2))\n")
    read_until(guest_sock, "STILL4")
    users = stack.run_in(mr, "/opt/rwbot/rwctl", "users").splitlines()
    state = {line.split("\t")[3]: line.split("\t")[5] for line in users}
    assert state == {"wes": "locked", "bea": "locked", "gus": "active"}
    # No write group left for the lowered writer, and the blocked user is
    # refused when they try the join link again with their session.
    assert "rwbot-write" not in stack.run_in(mr, "id", "-nG", "wes")
    r = blocked_http.get(stack.url + join_path(project, mr), timeout=30)
    assert r.status_code == 403 and "not active" in r.text
    guest_sock.close()
