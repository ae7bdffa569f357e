"""Devfile endpoints reached through the bot, end to end on real Podman.

The MR's devfile declares an endpoint and starts a small HTTP server in the
workspace (perl, from a postStart command); the workspace runs on a bridge
network this module creates, so the in-process bot can reach it.

Cases: the comment links each exposed endpoint; a signed-in Reporter goes
through the entry route, redeems the ticket on the endpoint's own host and gets
the workspace's page, with hop-by-hop headers and the bot's cookies dropped and
X-Forwarded-* set, and a request body passed through; the ticket cannot be used
twice; ``status`` links the endpoint too; the cookie does not open another
workspace's endpoint host; oversized bodies are answered clearly; a WebSocket
opened by the endpoint's own page reaches the workspace's server (which speaks
RFC 6455 in perl too) with its subprotocol, messages both ways and the closing
handshake, while one from a neighbouring endpoint's page, the bot's own page,
no page at all or without the cookie is refused, and one lasts no longer than
its cookie's access check; a neighbouring workspace's page (same-site, so the
browser sends the cookie) can neither post to the endpoint nor load from it,
while a visit from anywhere and the endpoint's own page are let through; a
signed-out viewer is sent to sign in and a Guest is refused; after
``/workspace stop`` the proxy answers 502.
"""

import http.client
import time
import uuid
from urllib.parse import urljoin, urlsplit

import docker
import pytest
import requests
import websocket

from bot import endpoints
from tests import harness, services
from tests.gitlab_double import DEVELOPER, GUEST, REPORTER

DOMAIN = "endpoints.test"

SERVER = r"""
use IO::Socket::INET;
use Digest::SHA qw(sha1_base64);
$SIG{CHLD} = 'IGNORE';
my $s = IO::Socket::INET->new(LocalPort => 8080, Listen => 10, ReuseAddr => 1)
    or die "listen: $!";
while (my $c = $s->accept) {
    if (fork) { close $c; next; }
    my $head = "";
    while (my $line = <$c>) { $head .= $line; last if $line eq "\r\n"; }
    if ($head =~ /^Upgrade: *websocket/mi) { websocket($c, $head); exit; }
    my ($len) = $head =~ /^Content-Length: *(\d+)/mi;
    my $body = "";
    read($c, $body, $len) if $len;
    my $out = "hello from the workspace\n${head}body=$body\n";
    print $c "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
        . "Content-Length: " . length($out) . "\r\n\r\n$out";
    close $c;
    exit;
}

# RFC 6455 as a dev server's live reload speaks it: a greeting naming the path
# (sent with the handshake's answer), then each message echoed.
sub websocket {
    my ($c, $head) = @_;
    my ($path) = $head =~ /^GET (\S+)/;
    my ($key) = $head =~ /^Sec-WebSocket-Key: *(\S+)/mi;
    my $accept = sha1_base64($key . "258EAFA5-E914-47DA-95CA-C5AB0DC85B11") . "=";
    my $proto = $head =~ /^Sec-WebSocket-Protocol:.*\becho\b/mi
        ? "Sec-WebSocket-Protocol: echo\r\n" : "";
    print $c "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        . "Connection: Upgrade\r\nSec-WebSocket-Accept: $accept\r\n$proto\r\n"
        . frame(1, "hello $path");
    while (read($c, my $h, 2) == 2) {
        my ($op, $len) = (ord($h) & 15, ord(substr($h, 1)) & 127);
        if ($len == 126) { read($c, my $l, 2); $len = unpack("n", $l); }
        read($c, my $mask, 4);
        my $data = "";
        read($c, $data, $len) if $len;
        $data ^= substr($mask x ($len / 4 + 1), 0, $len);
        if ($op == 8) { print $c frame(8, $data); last; }
        print $c frame($op, "echo $data");
    }
}

sub frame {
    my ($op, $data) = @_;
    my $len = length $data;
    return pack("CC", 0x80 | $op, $len) . $data if $len < 126;
    return pack("CCn", 0x80 | $op, 126, $len) . $data;
}
"""

DEVFILE = """\
schemaVersion: 2.2.0
components:
  - name: tooling
    container:
      image: localhost/rwbot-workspace:test
      endpoints:
        - name: web
          targetPort: 8080
        - name: debug
          targetPort: 9229
          exposure: internal
commands:
  - id: serve
    exec:
      component: tooling
      commandLine: setsid perl server.pl </dev/null >/dev/null 2>&1 &
events:
  postStart:
    - serve
"""


@pytest.fixture
def network(docker_host):
    client = docker.DockerClient(base_url=docker_host)
    created = client.networks.create(f"rwbot-ep-{uuid.uuid4().hex[:8]}", "bridge")
    yield created.name
    created.remove()
    client.close()


@pytest.fixture
def stack(docker_host, network, tmp_path):
    s = harness.Stack(
        docker_host, tmp_path, workspace_network=network, endpoints_domain=DOMAIN
    )
    yield s
    s.close()


@pytest.fixture
def workspace(stack):
    project = stack.gitlab.add_project("team/app")
    author = stack.gitlab.add_user("author")
    stack.gitlab.set_member(project, author, DEVELOPER)
    files = {".devfile.yaml": DEVFILE, "server.pl": SERVER}
    mr = stack.gitlab.open_mr(project, "feature", files, author=author)
    stack.deliver(stack.gitlab.mr_hook(mr, "open"))
    stack.settle_ready(mr)
    return project, mr


def entry_url(stack, project, mr, name="web"):
    return f"{stack.url}/w/{project['id']}/{mr['iid']}/endpoints/{name}"


def sign_in_and_enter(stack, project, mr, user):
    """Follow the entry route through sign-in; the last answer before the
    endpoint host (a refusal), or the endpoint URL the bot sends to."""
    stack.gitlab.login_as(user)
    browser = requests.Session()
    url = entry_url(stack, project, mr)
    while True:
        r = browser.get(url, allow_redirects=False, timeout=30)
        if r.status_code not in (302, 303):
            return r
        url = urljoin(url, r.headers["Location"])
        if urlsplit(url).hostname.endswith("." + DOMAIN):
            return url


def on_endpoint(stack, url, method="GET", cookie=None, **kwargs):
    """A request for an endpoint URL, sent to the bot with that Host."""
    parts = urlsplit(url)
    headers = {"Host": parts.netloc, **kwargs.pop("headers", {})}
    if cookie:
        headers["Cookie"] = cookie
    target = stack.url + parts.path + (f"?{parts.query}" if parts.query else "")
    return requests.request(
        method, target, headers=headers, allow_redirects=False, timeout=30, **kwargs
    )


def test_a_reporter_gets_the_workspace_page_on_the_endpoints_own_host(stack, workspace):
    project, mr = workspace
    body = stack.comment(mr)
    assert f"[web]({entry_url(stack, project, mr)})" in body
    assert "debug is internal" in body

    rita = stack.gitlab.add_user("rita")
    stack.gitlab.set_member(project, rita, REPORTER)
    ticket_url = sign_in_and_enter(stack, project, mr, rita)
    host = urlsplit(ticket_url).netloc
    assert host.startswith(f"web--p{project['id']}-mr{mr['iid']}.{DOMAIN}")

    r = on_endpoint(stack, ticket_url)
    assert r.status_code == 302 and r.headers["Location"] == "/"
    set_cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    assert "Max-Age=300" in set_cookie and "Domain" not in set_cookie
    cookie = set_cookie.split(";", 1)[0]
    assert on_endpoint(stack, ticket_url).status_code == 403  # used already

    page = f"http://{host}/"
    mixed = f"{cookie}; session=bot-session; theirs=1"
    r = services.wait_for(
        lambda: _ok(on_endpoint(stack, page, cookie=mixed)),
        timeout=30,
        what="the workspace's server to answer through the bot",
    )
    seen = r.text
    assert on_endpoint(stack, page, cookie=mixed, headers={"Keep-Alive": "5"}).ok
    assert seen.startswith("hello from the workspace")
    assert f"X-Forwarded-Host: {host}" in seen
    assert "X-Forwarded-Proto: http" in seen
    assert "X-Forwarded-For: 127.0.0.1" in seen
    assert "Cookie: theirs=1\r\n" in seen
    assert "session=" not in seen and "rwbot-endpoint" not in seen
    assert "Content-Security-Policy" not in r.headers

    posted = on_endpoint(stack, page, "POST", cookie=cookie, data=b"x" * 100_000)
    assert posted.status_code == 200 and posted.text.endswith("x" * 100_000 + "\n")

    other = f"http://web--p{project['id']}-mr{mr['iid'] + 1}.{DOMAIN}/"
    r = on_endpoint(stack, other, cookie=cookie)
    assert r.status_code == 302 and "/endpoints/web" in r.headers["Location"]

    assert _post_announcing(stack, host, cookie, 26 * 1024 * 1024) == 413

    dev = stack.gitlab.add_user("dev")
    stack.gitlab.set_member(project, dev, DEVELOPER)
    status = stack.gitlab.add_note(mr, dev, "/workspace status")
    stack.deliver(stack.gitlab.note_hook(status))
    stack.settle()
    link = f"**Endpoints:** [web]({entry_url(stack, project, mr)})"
    assert any(link in n["body"] for n in stack.gitlab.notes(mr))

    stop = stack.gitlab.add_note(mr, dev, "/workspace stop")
    stack.deliver(stack.gitlab.note_hook(stop))
    stack.settle()
    r = on_endpoint(stack, page, cookie=cookie)
    assert r.status_code == 502 and "not running" in r.text


def test_only_pages_of_the_workspace_reach_it_but_anyone_may_visit(stack, workspace):
    project, mr = workspace
    _, host, cookie = reporter_on_endpoint(stack, project, mr)
    page = f"http://{host}/"
    services.wait_for(
        lambda: _ok(on_endpoint(stack, page, cookie=cookie)),
        timeout=30,
        what="the workspace's server to answer through the bot",
    )

    live = open_websocket(stack, host, "/live?x=1", cookie, origin=page[:-1])
    assert live.getsubprotocol() == "echo"
    assert live.recv() == "hello /live?x=1"  # came with the handshake's answer
    live.send("ping")
    assert live.recv() == "echo ping"
    big = bytes(range(256)) * 234  # several reads and writes on the way
    live.send_binary(big)
    assert live.recv() == b"echo " + big
    live.close()  # the closing handshake goes through too

    neighbour = f"http://web--p{project['id']}-mr{mr['iid'] + 1}.{DOMAIN}"
    port = urlsplit(stack.url).port
    for origin in (f"{neighbour}:{port}", stack.url, None):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            open_websocket(stack, host, "/live", cookie, origin=origin)
        assert refused.value.status_code == 403
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Origin": page[:-1],
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    posted = on_endpoint(stack, f"{page}live", "POST", cookie=cookie, headers=upgrade)
    assert posted.status_code == 400
    r = on_endpoint(stack, f"{page}live", headers=upgrade)  # no cookie
    assert r.status_code == 302  # to the entry route and its access check
    assert r.headers["Location"].startswith(entry_url(stack, project, mr))

    # The neighbour's page is same-site: the browser would send the cookie.
    elsewhere = {"Origin": f"{neighbour}:{port}"}
    r = on_endpoint(stack, page, "POST", cookie=cookie, headers=elsewhere, data=b"x")
    assert r.status_code == 403 and "Only pages of this workspace" in r.text
    image = {
        "Sec-Fetch-Site": "same-site",
        "Sec-Fetch-Mode": "no-cors",
        "Referer": f"{neighbour}:{port}/",
    }
    assert on_endpoint(stack, page, cookie=cookie, headers=image).status_code == 403
    visit = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate"}
    r = on_endpoint(stack, page, cookie=cookie, headers=visit)
    assert r.status_code == 200 and r.text.startswith("hello from the workspace")
    own = {"Origin": page[:-1], "Sec-Fetch-Site": "same-origin"}
    r = on_endpoint(stack, page, "POST", cookie=cookie, headers=own, data=b"y")
    assert r.status_code == 200 and r.text.endswith("body=y\n")


def test_a_websocket_ends_when_its_access_check_is_due(stack, workspace):
    project, mr = workspace
    rita, host, _ = reporter_on_endpoint(stack, project, mr)
    secret = stack.settings.session_secret
    name = host.rsplit(":", 1)[0]
    checked = (
        int(time.time()) - endpoints.RECHECK_SECONDS + 20
    )  # as the cookie keeps it
    due_soon = endpoints.issue_cookie(secret, name, rita["id"], now=checked)
    cookie = f"{endpoints.cookie_name(False)}={due_soon}"
    services.wait_for(
        lambda: _ok(on_endpoint(stack, f"http://{host}/", cookie=cookie)),
        timeout=15,
        what="the workspace's server to answer through the bot",
    )

    live = open_websocket(stack, host, "/", cookie, origin=f"http://{host}")
    assert live.recv() == "hello /"
    live.settimeout(30)
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        live.recv()  # nothing comes but the end, once the check is due
    assert time.time() >= checked + endpoints.RECHECK_SECONDS


def reporter_on_endpoint(stack, project, mr):
    """A Reporter who went through the entry route: the user, the endpoint's
    host (with the bot's port) and the cookie that host gave them."""
    rita = stack.gitlab.add_user("rita")
    stack.gitlab.set_member(project, rita, REPORTER)
    ticket_url = sign_in_and_enter(stack, project, mr, rita)
    cookie = on_endpoint(stack, ticket_url).headers["Set-Cookie"].split(";", 1)[0]
    return rita, urlsplit(ticket_url).netloc, cookie


def open_websocket(stack, host, path, cookie, origin):
    """A WebSocket to ``path`` on an endpoint host, through the bot."""
    url = stack.url.replace("http://", "ws://", 1) + path
    options = {"origin": origin} if origin else {"suppress_origin": True}
    return websocket.create_connection(
        url, host=host, cookie=cookie, subprotocols=["echo"], timeout=30, **options
    )


def _ok(response):
    return response if response.status_code == 200 else None


def _post_announcing(stack, host, cookie, length):
    """Status of a POST that announces ``length`` bytes and sends none."""
    port = urlsplit(stack.url).port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("POST", "/", skip_host=True)
        conn.putheader("Host", host)
        conn.putheader("Cookie", cookie)
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_signed_out_viewer_is_sent_to_sign_in_and_a_guest_is_refused(
    stack, workspace
):
    project, mr = workspace
    r = requests.get(entry_url(stack, project, mr), allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"].startswith("/auth/login")

    page = f"http://web--p{project['id']}-mr{mr['iid']}.{DOMAIN}/x?y=1"
    r = on_endpoint(stack, page)
    assert r.status_code == 302
    assert r.headers["Location"].startswith(entry_url(stack, project, mr))
    assert "path=%2Fx%3Fy%3D1" in r.headers["Location"]

    gus = stack.gitlab.add_user("gus")
    stack.gitlab.set_member(project, gus, GUEST)
    refused = sign_in_and_enter(stack, project, mr, gus)
    assert refused.status_code == 403 and "Reporter" in refused.text
    forged = f"http://{urlsplit(page).netloc}/.rwbot/enter?ticket=forged"
    assert on_endpoint(stack, forged).status_code == 403
