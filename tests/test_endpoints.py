"""Endpoint host names, tickets and cookies (bot/endpoints.py), no I/O.

Cases: every endpoint of every workspace gets one lower-case DNS label that
parses back to exactly it (property-based), and hosts not made by the bot parse
to nothing; only public http(s) endpoints are exposed, the rest are named with
the reason; a ticket that is forged, expired, replayed or presented at another
host is refused; a cookie of workspace A is refused on workspace B's host, and
one whose access check is older than the recheck interval sends the viewer
back; the endpoints domain setting is validated.
"""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import endpoints, settings
from bot.devfile.model import Endpoint
from bot.runtime.base import WorkspaceKey

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


def test_a_good_ticket_gives_its_user_and_path_once():
    redeemed = endpoints.Redeemed()
    ticket = endpoints.issue_ticket(SECRET, A, 42, "/app?x=1", now=1000)

    assert endpoints.redeem_ticket(SECRET, ticket, A, redeemed, now=1010) == (
        42,
        "/app?x=1",
    )
    with pytest.raises(endpoints.Refused, match="used already"):
        endpoints.redeem_ticket(SECRET, ticket, A, redeemed, now=1011)


def test_a_forged_ticket_is_refused():
    ticket = endpoints.issue_ticket("another-secret", A, 42, "/", now=1000)
    with pytest.raises(endpoints.Refused, match="not valid"):
        endpoints.redeem_ticket(SECRET, ticket, A, endpoints.Redeemed(), now=1000)
    tampered = endpoints.issue_ticket(SECRET, A, 42, "/", now=1000)[:-2] + "AA"
    with pytest.raises(endpoints.Refused, match="not valid"):
        endpoints.redeem_ticket(SECRET, tampered, A, endpoints.Redeemed(), now=1000)


def test_an_expired_ticket_is_refused():
    ticket = endpoints.issue_ticket(SECRET, A, 42, "/", now=1000)
    late = 1000 + endpoints.TICKET_SECONDS + 1
    with pytest.raises(endpoints.Refused, match="expired"):
        endpoints.redeem_ticket(SECRET, ticket, A, endpoints.Redeemed(), now=late)


def test_a_ticket_for_one_host_is_refused_on_another():
    ticket = endpoints.issue_ticket(SECRET, A, 42, "/", now=1000)
    with pytest.raises(endpoints.Refused, match="another endpoint"):
        endpoints.redeem_ticket(SECRET, ticket, B, endpoints.Redeemed(), now=1000)


def test_a_ticket_never_lands_on_another_host():
    for path in ("//evil.example/", "https://evil.example/", "\\\\evil", "/a\nb"):
        ticket = endpoints.issue_ticket(SECRET, A, 42, path, now=1000)
        redeemed = endpoints.Redeemed()
        assert endpoints.redeem_ticket(SECRET, ticket, A, redeemed, now=1000)[1] == "/"


# -- cookies ---------------------------------------------------------------------


def test_a_cookie_of_workspace_a_is_refused_on_workspace_b():
    cookie = endpoints.issue_cookie(SECRET, A, 42, now=1000)

    assert endpoints.check_cookie(SECRET, [cookie], A, now=1001) == 42
    assert endpoints.check_cookie(SECRET, [cookie], B, now=1001) is None


def test_a_cookie_is_sent_back_for_an_access_check_after_the_interval():
    cookie = endpoints.issue_cookie(SECRET, A, 42, now=1000)
    late = 1000 + endpoints.RECHECK_SECONDS + 1
    assert endpoints.check_cookie(SECRET, [cookie], A, now=late) is None


def test_a_planted_cookie_does_not_shadow_the_hosts_own():
    planted = endpoints.issue_cookie(SECRET, B, 666, now=1000)
    own = endpoints.issue_cookie(SECRET, A, 42, now=1000)
    assert endpoints.check_cookie(SECRET, [planted, own], A, now=1000) == 42


def test_a_ticket_is_no_cookie_and_a_cookie_no_ticket():
    ticket = endpoints.issue_ticket(SECRET, A, 42, "/", now=1000)
    cookie = endpoints.issue_cookie(SECRET, A, 42, now=1000)
    assert endpoints.check_cookie(SECRET, [ticket], A, now=1000) is None
    with pytest.raises(endpoints.Refused):
        endpoints.redeem_ticket(SECRET, cookie, A, endpoints.Redeemed(), now=1000)


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
