"""Endpoint host names, tickets and cookies (bot/endpoints.py), and the store
that makes a ticket single-use across web replicas.

Cases: every endpoint of every workspace gets one lower-case DNS label that
parses back to exactly it (property-based), and hosts not made by the bot parse
to nothing; only public http(s) endpoints are exposed, the rest are named with
the reason; a ticket that is forged, expired or presented at another host is
refused; on SQLite and PostgreSQL, a ticket redeemed on one of two apps sharing
a database is refused on both, replicas redeeming one ticket at once let exactly
one in, and the resync forgets expired tickets; a cookie of workspace A is
refused on workspace B's host, and one whose access check is older than the
recheck interval sends the viewer back; the endpoints domain setting is
validated; a request is forwarded when it names a page of the same workspace
as its origin, or names none and is a visit, same-origin or from a browser that
sends no fetch metadata, and refused otherwise (WebSockets must name one).
"""

import datetime as dt
import re
import threading

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from bot import endpoints, resync, settings
from bot.app import create_app
from bot.devfile.model import Endpoint
from bot.gitlab import Client
from bot.runtime.base import WorkspaceKey
from bot.settings import Settings
from bot.store import RedeemedTicket, Store, utcnow

SECRET = "s3cret-for-tests"
DOMAIN = "endpoints.example.com"
A = endpoints.host_name("web", WorkspaceKey(7, 3), DOMAIN)
B = endpoints.host_name("web", WorkspaceKey(7, 4), DOMAIN)

names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?\Z")
keys = st.builds(WorkspaceKey, st.integers(1, 10**10), st.integers(1, 10**9))


@given(name=names, key=keys)
def test_every_endpoint_gets_one_dns_label_that_parses_back_to_it(name, key):
    host = endpoints.host_name(name, key, DOMAIN)

    label = host.removesuffix("." + DOMAIN)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", label)
    assert endpoints.parse_host(host, DOMAIN) == endpoints.Host(name, key)
    assert endpoints.parse_host(host.upper() + ":8443", DOMAIN) == endpoints.Host(
        name, key
    )


@given(name=names, key=keys, other_name=names, other_key=keys)
def test_different_endpoints_never_share_a_host(name, key, other_name, other_key):
    if (name, key) != (other_name, other_key):
        assert endpoints.host_name(name, key, DOMAIN) != endpoints.host_name(
            other_name, other_key, DOMAIN
        )


@pytest.mark.parametrize(
    "host",
    [
        DOMAIN,
        f"web.{DOMAIN}",
        f"web--p7-mr3.evil.{DOMAIN}",
        "web--p7-mr3.example.com",
        f"web--p07-mr3.{DOMAIN}",
        f"-web--p7-mr3.{DOMAIN}",
        f"web---p7-mr3.{DOMAIN}",
        f"web--p7-mr3x.{DOMAIN}",
    ],
)
def test_hosts_the_bot_did_not_make_name_no_endpoint(host):
    assert endpoints.parse_host(host, DOMAIN) is None


def test_a_name_too_long_for_a_dns_label_has_no_host():
    with pytest.raises(ValueError):
        endpoints.host_name("a" * 50, WorkspaceKey(10**9, 10**9), DOMAIN)


def test_only_public_http_endpoints_are_exposed_and_the_rest_say_why():
    shown, notes = endpoints.exposed(
        [
            Endpoint("web", 8080),
            Endpoint("tls", 8443, protocol="https"),
            Endpoint("debug", 9229, exposure="internal"),
            Endpoint("hidden", 9000, exposure="none"),
            Endpoint("db", 5432, protocol="tcp"),
        ]
    )

    assert [e.name for e in shown] == ["web", "tls"]
    assert notes == [
        "devfile endpoint debug is internal, so it is reachable only inside "
        "the workspace",
        "devfile endpoint hidden is none, so it is reachable only inside the workspace",
        "devfile endpoint db: unsupported protocol tcp (http and https only)",
    ]


def test_endpoint_notes_split_from_the_others():
    lines = [endpoints.note("web"), "Ran 1 postStart command(s)", "rwbot-endpoint:X!"]
    assert endpoints.split_notes(lines) == (["web"], ["Ran 1 postStart command(s)"])


# -- tickets ---------------------------------------------------------------------


def test_a_good_ticket_gives_its_user_path_id_and_expiry():
    ticket = endpoints.issue_ticket(SECRET, A, 42, "/app?x=1", now=1000)

    checked = endpoints.check_ticket(SECRET, ticket, A, now=1010)

    assert (checked.user_id, checked.path) == (42, "/app?x=1")
    assert checked.expires_at == dt.datetime(1970, 1, 1, 0, 17, 10)  # 1000 + 30 s
    other = endpoints.issue_ticket(SECRET, A, 42, "/app?x=1", now=1000)
    assert endpoints.check_ticket(SECRET, other, A, now=1010).id != checked.id


def test_a_forged_ticket_is_refused():
    ticket = endpoints.issue_ticket("another-secret", A, 42, "/", now=1000)
    with pytest.raises(endpoints.Refused, match="not valid"):
        endpoints.check_ticket(SECRET, ticket, A, now=1000)
    tampered = endpoints.issue_ticket(SECRET, A, 42, "/", now=1000)[:-2] + "AA"
    with pytest.raises(endpoints.Refused, match="not valid"):
        endpoints.check_ticket(SECRET, tampered, A, now=1000)


def test_an_expired_ticket_is_refused():
    ticket = endpoints.issue_ticket(SECRET, A, 42, "/", now=1000)
    late = 1000 + endpoints.TICKET_SECONDS + 1
    with pytest.raises(endpoints.Refused, match="expired"):
        endpoints.check_ticket(SECRET, ticket, A, now=late)


def test_a_ticket_for_one_host_is_refused_on_another():
    ticket = endpoints.issue_ticket(SECRET, A, 42, "/", now=1000)
    with pytest.raises(endpoints.Refused, match="another endpoint"):
        endpoints.check_ticket(SECRET, ticket, B, now=1000)


def test_a_ticket_never_lands_on_another_host():
    for path in ("//evil.example/", "https://evil.example/", "\\\\evil", "/a\nb"):
        ticket = endpoints.issue_ticket(SECRET, A, 42, path, now=1000)
        assert endpoints.check_ticket(SECRET, ticket, A, now=1000).path == "/"


# -- one use, across replicas ------------------------------------------------------


@pytest.fixture
def replicas(store):
    """Two web apps, each with its own engine on one database: two replicas."""
    common = Settings(
        gitlab_url="http://127.0.0.1:9",
        gitlab_token="tok",
        webhook_secret="s3cret",
        public_url="http://bot.test",
        database_url=store.url,
        session_secret=SECRET,
        endpoints_domain=DOMAIN,
        bot_user_id=99,
    )
    apps = [create_app(common, gitlab=Client(common)) for _ in range(2)]
    yield [app.test_client() for app in apps]
    for app in apps:
        app.config["RWBOT_STORE"].dispose()


def enter(client, ticket):
    return client.get(
        endpoints.ENTER_PATH, query_string={"ticket": ticket}, base_url=f"http://{A}"
    )


def test_a_ticket_redeemed_on_one_replica_is_refused_on_the_other(replicas):
    first, second = replicas
    ticket = endpoints.issue_ticket(SECRET, A, 42, "/app")

    entered = enter(first, ticket)
    assert entered.status_code == 302 and entered.headers["Location"] == "/app"
    assert "rwbot-endpoint=" in entered.headers["Set-Cookie"]

    for replica in (second, first):
        replayed = enter(replica, ticket)
        assert replayed.status_code == 403 and "used already" in replayed.text
        assert "Set-Cookie" not in replayed.headers


def test_replicas_redeeming_one_ticket_at_once_let_exactly_one_in(store):
    stores = [Store(store.url) for _ in range(2)]
    expires_at = utcnow() + dt.timedelta(seconds=endpoints.TICKET_SECONDS)
    start = threading.Barrier(8)
    results = []

    def redeem(replica):
        start.wait()
        results.append(replica.redeem_ticket("the-ticket", expires_at))

    threads = [threading.Thread(target=redeem, args=(stores[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for replica in stores:
        replica.dispose()

    assert sorted(results) == [False] * 7 + [True]


def test_the_resync_forgets_tickets_once_they_expired(store):
    now = utcnow()
    assert store.redeem_ticket("old", now - resync.TICKET_GRACE - dt.timedelta(1))
    assert store.redeem_ticket("recent", now - dt.timedelta(seconds=1))
    assert store.redeem_ticket("live", now + dt.timedelta(seconds=20))

    resync.forget_old(store)

    with store.session() as session:
        kept = set(session.scalars(sa.select(RedeemedTicket.id)))
    assert kept == {"recent", "live"}
    assert not store.redeem_ticket("live", now + dt.timedelta(seconds=20))


# -- cookies ---------------------------------------------------------------------


def test_a_cookie_of_workspace_a_is_refused_on_workspace_b():
    cookie = endpoints.issue_cookie(SECRET, A, 42, now=1000)

    assert endpoints.check_cookie(SECRET, [cookie], A, now=1001) == endpoints.Visitor(
        42, 1000 + endpoints.RECHECK_SECONDS
    )
    assert endpoints.check_cookie(SECRET, [cookie], B, now=1001) is None


def test_a_cookie_is_sent_back_for_an_access_check_after_the_interval():
    cookie = endpoints.issue_cookie(SECRET, A, 42, now=1000)
    late = 1000 + endpoints.RECHECK_SECONDS + 1
    assert endpoints.check_cookie(SECRET, [cookie], A, now=late) is None


def test_a_planted_cookie_does_not_shadow_the_hosts_own():
    planted = endpoints.issue_cookie(SECRET, B, 666, now=1000)
    own = endpoints.issue_cookie(SECRET, A, 42, now=1000)
    assert endpoints.check_cookie(SECRET, [planted, own], A, now=1000).user_id == 42


def test_a_ticket_is_no_cookie_and_a_cookie_no_ticket():
    ticket = endpoints.issue_ticket(SECRET, A, 42, "/", now=1000)
    cookie = endpoints.issue_cookie(SECRET, A, 42, now=1000)
    assert endpoints.check_cookie(SECRET, [ticket], A, now=1000) is None
    with pytest.raises(endpoints.Refused):
        endpoints.check_ticket(SECRET, cookie, A, now=1000)


# -- setting ---------------------------------------------------------------------

ENV = {
    "RWBOT_GITLAB_URL": "https://gitlab.example.com",
    "RWBOT_GITLAB_TOKEN": "t",
    "RWBOT_WEBHOOK_SECRET": "w",
    "RWBOT_PUBLIC_URL": "https://bot.example.com",
}


def test_the_endpoints_domain_is_off_by_default_and_normalised():
    assert settings.from_env(ENV).endpoints_domain == ""
    env = {**ENV, "RWBOT_ENDPOINTS_DOMAIN": "Endpoints.Example.NET."}
    assert settings.from_env(env).endpoints_domain == "endpoints.example.net"


@pytest.mark.parametrize(
    "value", ["example.com", "bot.example.com", "bad_name.example", "a..b", "-a.b"]
)
def test_a_bad_endpoints_domain_stops_start_up_naming_it(value):
    env = {**ENV, "RWBOT_ENDPOINTS_DOMAIN": value}
    with pytest.raises(settings.SettingsError, match="RWBOT_ENDPOINTS_DOMAIN"):
        settings.from_env(env)


# -- where a request comes from -----------------------------------------------

KEY = WorkspaceKey(7, 3)
API = endpoints.host_name("api", KEY, DOMAIN)  # another endpoint, same workspace


def forward(
    method="GET",
    websocket=False,
    origin=None,
    referer=None,
    site=None,
    mode=None,
):
    return endpoints.may_forward(
        KEY,
        DOMAIN,
        method=method,
        websocket=websocket,
        origin=origin,
        referer=referer,
        fetch_site=site,
        fetch_mode=mode,
    )


@pytest.mark.parametrize(
    "origin",
    [f"https://{A}", f"https://{API}:8443", f"http://{A.upper()}"],
)
def test_a_request_naming_a_page_of_the_workspace_is_forwarded(origin):
    assert forward("POST", origin=origin, site="same-site", mode="cors")
    assert forward(websocket=True, origin=origin)


@pytest.mark.parametrize(
    "origin",
    [
        f"https://{B}",  # the next MR's endpoint: same site, other workspace
        "https://bot.example.com",
        f"https://{DOMAIN}",
        "null",
        "http://[",
        "",
    ],
)
def test_a_request_naming_any_other_origin_is_refused(origin):
    assert not forward("POST", origin=origin, site="same-site", mode="cors")
    assert not forward(origin=origin, site="same-site", mode="navigate")
    assert not forward(websocket=True, origin=origin)


def test_a_websocket_that_names_no_origin_is_refused():
    assert not forward(websocket=True)
    assert not forward(websocket=True, referer=f"https://{A}/", site="same-origin")


def test_an_image_or_script_from_elsewhere_on_the_site_is_refused():
    for site in ("same-site", "cross-site"):
        assert not forward(site=site, mode="no-cors", referer=f"https://{B}/")
        assert not forward(site=site, mode="no-cors")
        assert not forward("POST", site=site, mode="navigate")  # no Origin: no page's
    assert forward(site="same-site", mode="no-cors", referer=f"https://{API}/app")


def test_a_top_level_visit_from_anywhere_and_same_origin_requests_are_forwarded():
    assert forward(site="cross-site", mode="navigate")
    assert forward("HEAD", site="same-site", mode="navigate")
    assert forward(site="same-origin", mode="no-cors")
    assert forward(site="none", mode="navigate")  # typed into the address bar


def test_a_browser_that_says_nothing_of_where_it_comes_from_is_let_through():
    assert forward()
    assert forward("POST")
