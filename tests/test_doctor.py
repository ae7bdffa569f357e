"""``rwbot doctor`` against the GitLab double and real Podman.

Cases: a healthy installation passes every check (the OAuth redirect URI warns
until GitLab has a signed-in user to check it for, then passes) and exits 0,
leaving no workspace behind; each misconfiguration fails (or warns) on its own
line with the advice to fix it and a non-zero exit code: a rejected token, a
token without the ``api`` scope, the bot not a member, only Reporter, only
Developer (warns), the webhook missing, the webhook without merge request or
comment events or with SSL verification off, a webhook GitLab disabled
(``alert_status``), two webhooks to the bot, one to another URL, the OAuth
client not configured, a wrong client secret, a wrong redirect URI, the runtime
unreachable, the workspace image missing, the store not migrated or unreachable;
GitLab unreachable fails its lines but the runtime and store are still checked;
GitLab's own error page wording is recognised; the CLI prints one line per check
and exits 1 when one fails; the pure decisions (``hook_problems``,
``role_verdict``) case by case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import gitlab as python_gitlab
import pytest

from bot import doctor
from bot.doctor import Verdict
from bot.gitlab import Client, RegisteredHook
from bot.runtime.docker import DockerRuntime
from bot.settings import Settings
from bot.store import Store
from tests import harness
from tests.gitlab_double import DEVELOPER, REPORTER, GitLabDouble

PUBLIC_URL = "https://rwbot.example.test"
CALLBACK = f"{PUBLIC_URL}/auth/callback"
HOOK_URL = f"{PUBLIC_URL}/webhooks/gitlab"


@pytest.fixture
def double() -> Any:
    with GitLabDouble() as d:
        d.add_user("rita", name="Rita Reviewer")
        d.add_project("team/app")
        yield d


@pytest.fixture
def settings(double: GitLabDouble, tmp_path: Path) -> Settings:
    client_id, secret = double.register_oauth_app(CALLBACK)
    s = harness.bot_settings(
        double,
        PUBLIC_URL,
        f"sqlite:///{tmp_path}/bot.db",
        projects=("team/app",),
        oauth_client_id=client_id,
        oauth_client_secret=secret,
    )
    store = Store(s.database_url)
    store.migrate()
    store.dispose()
    client = Client(s)
    project = client.project("team/app")
    client.install_hook(project, HOOK_URL, s.webhook_secret, None)
    return s


@pytest.fixture
def runtime(docker_host: str, settings: Settings) -> Any:
    r = DockerRuntime(docker.DockerClient(base_url=docker_host), settings.instance)
    yield r
    assert list(r.list_ours()) == [], "the doctor left a workspace behind"


def run(settings: Settings, runtime: Any, **overrides: Any) -> dict[str, Any]:
    checks = doctor.run(settings.with_overrides(**overrides), runtime=runtime)
    return {c.name: c for c in checks} | {"exit": doctor.exit_code(checks)}


def verdicts(result: dict[str, Any]) -> dict[str, Verdict]:
    return {name: c.verdict for name, c in result.items() if name != "exit"}


def bot_api(double: GitLabDouble) -> python_gitlab.Gitlab:
    return python_gitlab.Gitlab(double.url, private_token=double.token)


HEALTHY = {
    "gitlab token": Verdict.OK,
    "access team/app": Verdict.OK,
    "webhook team/app": Verdict.OK,
    "oauth": Verdict.WARN,
    "runtime docker": Verdict.OK,
    "store": Verdict.OK,
}


def test_a_healthy_installation_passes_every_check_and_exits_zero(
    settings: Settings, runtime: Any
) -> None:
    result = run(settings, runtime)

    assert verdicts(result) == HEALTHY
    assert result["exit"] == 0
    assert "@review-bot" in result["gitlab token"].detail
    assert "scopes api" in result["gitlab token"].detail
    assert "throwaway workspace" in result["runtime docker"].detail
    assert "signed-in user" in result["oauth"].detail
    assert f"client_id={settings.oauth_client_id}" in result["oauth"].detail
    assert settings.oauth_client_secret not in result["oauth"].detail


def test_a_signed_in_gitlab_user_lets_the_redirect_uri_pass(
    double: GitLabDouble, settings: Settings, runtime: Any
) -> None:
    double.login_as("rita")

    result = run(settings, runtime)

    assert verdicts(result) == HEALTHY | {"oauth": Verdict.OK}
    assert "client id and secret accepted" in result["oauth"].detail


def test_a_rejected_token_fails_the_token_line(
    settings: Settings, runtime: Any
) -> None:
    result = run(settings, runtime, gitlab_token="glpat-wrong")

    assert result["gitlab token"].verdict is Verdict.FAIL
    assert "RWBOT_GITLAB_TOKEN" in result["gitlab token"].detail
    assert result["store"].verdict is Verdict.OK
    assert result["exit"] == 1


def test_a_token_without_the_api_scope_fails_the_token_line(
    double: GitLabDouble, settings: Settings, runtime: Any
) -> None:
    read_only = double.issue_token(double.bot_user, ["read_api"])

    result = run(settings, runtime, gitlab_token=read_only)

    assert result["gitlab token"].verdict is Verdict.FAIL
    assert "scopes are read_api" in result["gitlab token"].detail
    assert "create a token with the api scope" in result["gitlab token"].detail
    assert result["exit"] == 1


def test_a_bot_that_is_not_a_member_fails_the_access_line(
    double: GitLabDouble, settings: Settings, runtime: Any
) -> None:
    double.remove_member("team/app", double.bot_user)

    result = run(settings, runtime)

    assert result["access team/app"].verdict is Verdict.FAIL
    assert "cannot see team/app" in result["access team/app"].detail
    assert "Maintainer" in result["access team/app"].detail
    assert result["exit"] == 1


def test_a_reporter_bot_fails_and_a_developer_bot_warns(
    double: GitLabDouble, settings: Settings, runtime: Any
) -> None:
    double.set_member("team/app", double.bot_user, REPORTER)
    as_reporter = run(settings, runtime)
    double.set_member("team/app", double.bot_user, DEVELOPER)
    as_developer = run(settings, runtime)

    assert as_reporter["access team/app"].verdict is Verdict.FAIL
    assert "only Reporter" in as_reporter["access team/app"].detail
    assert as_reporter["exit"] == 1
    assert as_developer["access team/app"].verdict is Verdict.WARN
    assert "needs Maintainer" in as_developer["access team/app"].detail
    assert as_developer["webhook team/app"].verdict is Verdict.WARN
    assert as_developer["exit"] == 0


def test_a_missing_webhook_fails_with_the_install_command(
    double: GitLabDouble, settings: Settings, runtime: Any
) -> None:
    project = bot_api(double).projects.get("team/app")
    for hook in project.hooks.list():
        hook.delete()

    result = run(settings, runtime)

    line = result["webhook team/app"]
    assert line.verdict is Verdict.FAIL
    assert f"no webhook to {HOOK_URL}" in line.detail
    assert "run `rwbot hooks install team/app`" in line.detail
    assert result["exit"] == 1


def test_a_webhook_without_comment_events_or_ssl_verification_fails(
    double: GitLabDouble, settings: Settings, runtime: Any
) -> None:
    project = bot_api(double).projects.get("team/app")
    (hook,) = project.hooks.list()
    project.hooks.update(
        hook.id,
        {"url": HOOK_URL, "note_events": False, "enable_ssl_verification": False},
    )

    result = run(settings, runtime)

    line = result["webhook team/app"]
    assert line.verdict is Verdict.FAIL
    assert "comment events are off" in line.detail
    assert "SSL verification is off" in line.detail
    assert "rwbot hooks install team/app" in line.detail


def hook_line(settings: Settings) -> doctor.Check:
    """The webhook check alone: no runtime, no throwaway workspace."""
    return doctor.project_hook(Client(settings), settings, "team/app")


def test_a_webhook_without_merge_request_events_fails(
    double: GitLabDouble, settings: Settings
) -> None:
    project = bot_api(double).projects.get("team/app")
    (hook,) = project.hooks.list()
    project.hooks.update(hook.id, {"url": HOOK_URL, "merge_requests_events": False})

    line = hook_line(settings)

    assert line.verdict is Verdict.FAIL
    assert "merge request events are off" in line.detail
    assert "comment events" not in line.detail


@pytest.mark.parametrize(
    ("until", "status"),
    [(None, "disabled"), (datetime(2030, 1, 1, tzinfo=UTC), "temporarily_disabled")],
)
def test_a_webhook_gitlab_stopped_delivering_to_fails(
    double: GitLabDouble, settings: Settings, until: datetime | None, status: str
) -> None:
    double.disable_hooks("team/app", until=until)

    line = hook_line(settings)

    assert line.verdict is Verdict.FAIL
    assert f"GitLab stopped delivering ({status})" in line.detail


def test_two_webhooks_to_the_bot_fail_asking_to_delete_one(
    double: GitLabDouble, settings: Settings
) -> None:
    project = bot_api(double).projects.get("team/app")
    project.hooks.create(
        {"url": HOOK_URL, "merge_requests_events": True, "note_events": True}
    )

    line = hook_line(settings)

    assert line.verdict is Verdict.FAIL
    assert f"2 webhooks to {HOOK_URL}: delete all but one" in line.detail


def test_a_webhook_to_another_url_fails_naming_it(
    double: GitLabDouble, settings: Settings
) -> None:
    project = bot_api(double).projects.get("team/app")
    (hook,) = project.hooks.list()
    old = "https://old-bot.example.test/webhooks/gitlab"
    project.hooks.update(hook.id, {"url": old})

    line = hook_line(settings)

    assert line.verdict is Verdict.FAIL
    assert f"no webhook to {HOOK_URL} (one goes to {old})" in line.detail


def test_a_missing_workspace_image_fails_the_runtime_line(
    settings: Settings, runtime: Any
) -> None:
    missing = "localhost/rwbot-no-such-image:never"

    result = run(settings, runtime, workspace_image=missing)

    line = result["runtime docker"]
    assert line.verdict is Verdict.FAIL
    assert f"the workspace image {missing} is not available" in line.detail
    assert result["exit"] == 1


def test_an_unconfigured_oauth_client_fails_the_oauth_line(
    settings: Settings, runtime: Any
) -> None:
    result = run(settings, runtime, oauth_client_id=None, oauth_client_secret=None)

    line = result["oauth"]
    assert line.verdict is Verdict.FAIL
    assert "RWBOT_OAUTH_CLIENT_ID and RWBOT_OAUTH_CLIENT_SECRET not set" in line.detail
    assert CALLBACK in line.detail
    assert result["exit"] == 1


def test_a_wrong_client_secret_fails_the_oauth_line(
    settings: Settings, runtime: Any
) -> None:
    result = run(settings, runtime, oauth_client_secret="gloas-wrong")

    assert result["oauth"].verdict is Verdict.FAIL
    assert "copy both again" in result["oauth"].detail
    assert "gloas-wrong" not in result["oauth"].detail


def test_a_wrong_redirect_uri_fails_once_gitlab_checks_it(
    double: GitLabDouble, settings: Settings, runtime: Any
) -> None:
    client_id, secret = double.register_oauth_app("https://elsewhere.test/cb")
    wrong = {"oauth_client_id": client_id, "oauth_client_secret": secret}

    anonymous = run(settings, runtime, **wrong)
    double.login_as("rita")
    signed_in = run(settings, runtime, **wrong)

    assert anonymous["oauth"].verdict is Verdict.WARN
    assert signed_in["oauth"].verdict is Verdict.FAIL
    assert f"refuses the redirect URI {CALLBACK}" in signed_in["oauth"].detail
    assert signed_in["exit"] == 1


def test_gitlabs_own_error_page_wording_is_recognised() -> None:
    page = (
        "<h1>An error has occurred</h1><main><pre>The requested redirect uri is "
        "malformed or doesn't match client redirect URI.</pre></main>"
    )
    unknown = "<pre>Client authentication failed due to unknown client, ...</pre>"
    sign_in = "https://gitlab.example.com/users/sign_in"

    assert doctor.authorize_verdict(200, "", page, CALLBACK, "u")[0] is Verdict.FAIL
    assert doctor.authorize_verdict(200, "", unknown, CALLBACK, "u")[0] is (
        Verdict.FAIL
    )
    assert doctor.authorize_verdict(302, sign_in, "", CALLBACK, "u")[0] is (
        Verdict.WARN
    )
    assert doctor.authorize_verdict(302, f"{CALLBACK}?code=x", "", CALLBACK, "u")[
        0
    ] is (Verdict.OK)


def test_an_unreachable_runtime_fails_the_runtime_line(
    settings: Settings, tmp_path: Path
) -> None:
    dead = docker.DockerClient(base_url=f"unix://{tmp_path}/dead.sock", version="1.41")

    result = run(settings, DockerRuntime(dead, settings.instance))

    line = result["runtime docker"]
    assert line.verdict is Verdict.FAIL
    assert "unreachable" in line.detail and "DOCKER_HOST" in line.detail
    assert result["store"].verdict is Verdict.OK
    assert result["exit"] == 1


def test_an_unmigrated_store_fails_with_the_migrate_command(
    settings: Settings, runtime: Any, tmp_path: Path
) -> None:
    result = run(settings, runtime, database_url=f"sqlite:///{tmp_path}/empty.db")

    assert result["store"].verdict is Verdict.FAIL
    assert "run `rwbot migrate`" in result["store"].detail
    assert result["exit"] == 1


def test_an_unreachable_store_fails_the_store_line(
    settings: Settings, runtime: Any, tmp_path: Path
) -> None:
    nowhere = f"sqlite:///{tmp_path}/missing-dir/bot.db"

    result = run(settings, runtime, database_url=nowhere)

    assert result["store"].verdict is Verdict.FAIL
    assert "database unavailable" in result["store"].detail
    assert "RWBOT_DATABASE_URL" in result["store"].detail


def test_an_unreachable_gitlab_fails_its_lines_but_the_rest_still_runs(
    double: GitLabDouble, settings: Settings, runtime: Any
) -> None:
    double.set_unreachable()

    result = run(settings, runtime)

    for name in ("gitlab token", "access team/app", "webhook team/app", "oauth"):
        assert result[name].verdict is Verdict.FAIL, name
        assert "GitLab unreachable" in result[name].detail
    assert result["runtime docker"].verdict is Verdict.WARN
    assert result["store"].verdict is Verdict.OK


def test_the_cli_prints_one_line_per_check_and_exits_one_on_a_failure(
    double: GitLabDouble, settings: Settings, runtime: Any, docker_host: str
) -> None:
    project = bot_api(double).projects.get("team/app")
    for hook in project.hooks.list():
        hook.delete()
    assert settings.oauth_client_id and settings.oauth_client_secret
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "DOCKER_HOST": docker_host,
        "RWBOT_GITLAB_URL": settings.gitlab_url,
        "RWBOT_GITLAB_TOKEN": settings.gitlab_token,
        "RWBOT_WEBHOOK_SECRET": settings.webhook_secret,
        "RWBOT_PUBLIC_URL": settings.public_url,
        "RWBOT_DATABASE_URL": settings.database_url,
        "RWBOT_WORKSPACE_IMAGE": settings.workspace_image,
        "RWBOT_WORKSPACE_NETWORK": settings.workspace_network,
        "RWBOT_INSTANCE": settings.instance,
        "RWBOT_OAUTH_CLIENT_ID": settings.oauth_client_id,
        "RWBOT_OAUTH_CLIENT_SECRET": settings.oauth_client_secret,
    }

    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "doctor", "team/app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    lines = done.stdout.splitlines()
    assert done.returncode == 1, done.stdout + done.stderr
    assert lines[0].startswith("ok    gitlab token: ")
    assert any(line.startswith("FAIL  webhook team/app: no webhook") for line in lines)
    assert any(line.startswith("ok    runtime docker: ") for line in lines)
    assert lines[-1] == "1 of 6 checks failed"
    assert settings.gitlab_token not in done.stdout + done.stderr


# -- decisions ----------------------------------------------------------------


def hook(url: str = HOOK_URL, alert: str = "executable", **flags: bool) -> Any:
    on = {"merge_requests_events": True, "note_events": True}
    on |= {"enable_ssl_verification": True} | flags
    return RegisteredHook(id=1, url=url, flags=on, alert_status=alert)


def test_hook_problems_finds_nothing_wrong_with_one_right_hook() -> None:
    assert doctor.hook_problems([hook(), hook("https://ci.example/x")], HOOK_URL) == []


def test_hook_problems_names_each_missing_event_and_check() -> None:
    wrong = hook(
        merge_requests_events=False, note_events=False, enable_ssl_verification=False
    )
    assert doctor.hook_problems([wrong], HOOK_URL) == [
        "merge request events are off",
        "comment events are off",
        "SSL verification is off",
    ]


def test_hook_problems_reports_a_disabled_hook_and_duplicates() -> None:
    problems = doctor.hook_problems(
        [hook(alert="temporarily_disabled"), hook()], HOOK_URL
    )
    assert problems == [
        "GitLab stopped delivering (temporarily_disabled)",
        f"2 webhooks to {HOOK_URL}: delete all but one",
    ]


def test_hook_problems_points_at_a_bot_webhook_elsewhere_but_not_other_hooks() -> None:
    elsewhere = "https://old.example/webhooks/gitlab"
    assert doctor.hook_problems([hook(elsewhere)], HOOK_URL) == [
        f"no webhook to {HOOK_URL} (one goes to {elsewhere})"
    ]
    assert doctor.hook_problems([hook("https://ci.example/x")], HOOK_URL) == [
        f"no webhook to {HOOK_URL}"
    ]


@pytest.mark.parametrize(
    ("level", "verdict", "words"),
    [
        (None, Verdict.FAIL, "is not a member of team/app: add it as Maintainer"),
        (10, Verdict.FAIL, "is only Guest: make it Maintainer"),
        (20, Verdict.FAIL, "is only Reporter: make it Maintainer"),
        (30, Verdict.WARN, "managing the webhook (`rwbot hooks install`) needs"),
        (40, Verdict.OK, "@bot is Maintainer"),
        (50, Verdict.OK, "@bot is Owner"),
    ],
)
def test_role_verdict_by_access_level(
    level: int | None, verdict: Verdict, words: str
) -> None:
    got, detail = doctor.role_verdict(level, "bot", "team/app")

    assert got is verdict
    assert words in detail


def test_on_kubernetes_a_developer_bot_cannot_mint_clone_tokens() -> None:
    got, detail = doctor.role_verdict(30, "bot", "team/app", mints_clone_tokens=True)

    assert got is Verdict.FAIL
    assert "deploy token, which only a Maintainer may create" in detail
    assert doctor.role_verdict(40, "bot", "team/app", mints_clone_tokens=True)[0] is (
        Verdict.OK
    )
