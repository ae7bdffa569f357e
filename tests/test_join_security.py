"""The join flow refuses what it must, without a browser.

Cases: the join link alone grants nothing (redirect to sign-in); a forged or
replayed OAuth ``state`` and a reused authorization code are refused; a session
identifier planted before sign-in does not survive it; the terminal WebSocket
refuses another site's Origin and a missing session; a member who never opened
the join link gets no shell; open redirects through ``next`` are not followed;
closing the terminal ends the user's shell.
"""

import json

import pytest
import requests
import websocket

from tests import services
from tests.gitlab_double import DEVELOPER
from tests.live import cookie_header, join_path, read_until, signed_in, ws_url


@pytest.fixture
def workspace(stack):
    project = stack.gitlab.add_project("team/app")
    author = stack.gitlab.add_user("author")
    stack.gitlab.set_member(project, author, DEVELOPER)
    mr = stack.gitlab.open_mr(project, "feature", {"a.txt": "a\n"}, author=author)
    stack.deliver(stack.gitlab.mr_hook(mr, "open"))
    stack.settle()
    return project, mr


def test_the_join_link_alone_grants_nothing(stack, workspace):
    project, mr = workspace
    r = requests.get(
        stack.url + join_path(project, mr), allow_redirects=False, timeout=10
    )
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/auth/login")


def test_a_forged_state_is_refused(stack, workspace):
    _project, _mr = workspace
    http = requests.Session()
    http.get(stack.url + "/auth/login", allow_redirects=False, timeout=10)
    r = http.get(stack.url + "/auth/callback?code=abc&state=forged", timeout=10)
    assert r.status_code == 400
    assert "person" not in http.cookies.get("session", "")


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
