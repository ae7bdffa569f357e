"""``rwbot doctor``: can this installation do its job? One line per check.

Checks, in order: the GitLab token (valid, ``api`` scope); per served project the
bot's role and the webhook; the OAuth application reviewers sign in with; the
runtime (reachable, and able to create, exec into and remove a workspace); the
store (reachable, migrated). Each check is a function returning a :class:`Check`;
:func:`run` calls them in turn, and an exception in one becomes that check's
``FAIL`` line so the others still run. The verdict decisions are plain functions
(:func:`role_verdict`, :func:`hook_problems`, :func:`authorize_verdict`).

Two choices worth knowing:

- GitLab looks at an OAuth client and its redirect URI only once a user is
  signed in: an anonymous ``/oauth/authorize`` is sent to the sign-in page
  first (``resource_owner_authenticator`` in GitLab's Doorkeeper setup). So the
  client id and secret are checked at ``/oauth/token`` with a made-up code
  (Doorkeeper authenticates the client before it looks at the code), and the
  redirect URI fails only when GitLab names it wrong; when GitLab asks for a
  sign-in instead, the line warns with the link to open once in a browser.
- The runtime check uses the :class:`~bot.runtime.base.Runtime` interface
  unchanged: a throwaway workspace (project id 0, a random MR iid) checked out
  from a served project's default branch. That is the path a real merge request
  takes (clone from GitLab with the bot's token, start, exec, remove) on either
  runtime, at the cost of needing one project the bot can read. It is removed
  whatever happens; a resync running at the same moment may remove it first.
"""

from __future__ import annotations

import enum
import functools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from bot.errors import BotError, ConfigError, PermanentError, TemporaryError
from bot.gitlab import Client, NotFound, Project, RegisteredHook
from bot.runtime.base import Phase, Runtime, Source, Spec, WorkspaceKey
from bot.settings import DEVELOPER, MAINTAINER, Settings

log = logging.getLogger(__name__)

ROLES = {10: "Guest", 20: "Reporter", 30: "Developer", 40: "Maintainer", 50: "Owner"}
OAUTH_SCOPES = "openid read_user"


class Verdict(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str

    def line(self) -> str:
        return f"{self.verdict.value:<4}  {self.name}: {self.detail}"


# -- decisions (no I/O) --------------------------------------------------------


def role_verdict(
    level: int | None, bot: str, project: str, *, mints_clone_tokens: bool = False
) -> tuple[Verdict, str]:
    """Developer runs workspaces and comments; Maintainer also manages hooks,
    and on Kubernetes mints each workspace's short-lived clone token."""
    if level is None:
        return (
            Verdict.FAIL,
            f"@{bot} is not a member of {project}: add it as Maintainer",
        )
    role = ROLES.get(level, str(level))
    if level < DEVELOPER:
        return Verdict.FAIL, f"@{bot} is only {role}: make it Maintainer"
    if level < MAINTAINER and mints_clone_tokens:
        return (
            Verdict.FAIL,
            f"@{bot} is Developer: on Kubernetes each workspace clones with a "
            "deploy token, which only a Maintainer may create: make it Maintainer",
        )
    if level < MAINTAINER:
        return (
            Verdict.WARN,
            f"@{bot} is Developer: enough to serve, but managing the webhook "
            "(`rwbot hooks install`) needs Maintainer",
        )

    return Verdict.OK, f"@{bot} is {role}"


def hook_problems(hooks: Sequence[RegisteredHook], url: str) -> list[str]:
    """What is wrong with the bot's webhook among ``hooks``; empty if nothing."""
    ours = [h for h in hooks if h.url == url]
    if not ours:
        elsewhere = [h.url for h in hooks if h.url.endswith("/webhooks/gitlab")]
        hint = f" (one goes to {elsewhere[0]})" if elsewhere else ""
        return [f"no webhook to {url}{hint}"]
    hook = ours[0]
    problems = []
    if not hook.flags.get("merge_requests_events"):
        problems.append("merge request events are off")
    if not hook.flags.get("note_events"):
        problems.append("comment events are off")
    if not hook.flags.get("enable_ssl_verification"):
        problems.append("SSL verification is off")
    if hook.alert_status != "executable":
        problems.append(f"GitLab stopped delivering ({hook.alert_status})")
    if len(ours) > 1:
        problems.append(f"{len(ours)} webhooks to {url}: delete all but one")

    return problems


def authorize_verdict(
    status: int, location: str, body: str, callback: str, authorize_url: str
) -> tuple[Verdict, str]:
    """Judge GitLab's answer to ``/oauth/authorize`` (not followed).

    GitLab shows client and redirect URI errors on a page with Doorkeeper's
    description (the double names the error code); other errors, and the code,
    go back to the redirect URI.
    """
    text = f"{location}\n{body}".lower()
    if "invalid_redirect_uri" in text or "match client redirect uri" in text:
        return (
            Verdict.FAIL,
            f"GitLab refuses the redirect URI {callback}: add it to the "
            "application's callback URLs",
        )
    if "invalid_client" in text or "client authentication failed" in text:
        return Verdict.FAIL, "GitLab does not know RWBOT_OAUTH_CLIENT_ID"
    if location.startswith(callback):
        error = parse_qs(urlsplit(location).query).get("error", [""])[0]
        if error == "invalid_scope":
            return (
                Verdict.FAIL,
                f"the application lacks the scopes {OAUTH_SCOPES}: tick them",
            )
        if error:
            return Verdict.WARN, f"GitLab sent the browser back with error={error}"
        return Verdict.OK, f"redirect URI {callback} accepted"
    if status >= 500:
        raise TemporaryError(f"GitLab answered {status} to /oauth/authorize")

    return (
        Verdict.WARN,
        "GitLab checks the redirect URI only for a signed-in user: open "
        f"{authorize_url} once in a browser; it should end at {callback}",
    )


# -- checks ---------------------------------------------------------------------


def gitlab_token(gitlab: Client, settings: Settings) -> Check:
    name = "gitlab token"
    try:
        user = gitlab.whoami()
    except ConfigError as err:
        return Check(
            name,
            Verdict.FAIL,
            f"{err}: RWBOT_GITLAB_TOKEN is wrong, expired, revoked or lacks the "
            "api scope; create one with the api scope",
        )
    try:
        scopes = gitlab.token_scopes()
    except (NotFound, PermanentError) as err:
        return Check(
            name,
            Verdict.WARN,
            f"signed in as @{user.username}, but could not read the token's "
            f"scopes ({err}); make sure it has the api scope",
        )
    if "api" not in scopes:
        return Check(
            name,
            Verdict.FAIL,
            f"signed in as @{user.username}, but the token's scopes are "
            f"{', '.join(scopes) or 'none'}: create a token with the api scope",
        )

    return Check(
        name,
        Verdict.OK,
        f"signed in at {settings.gitlab_url} as @{user.username}; "
        f"scopes {', '.join(scopes)}",
    )


def project_access(gitlab: Client, settings: Settings, ref: str) -> Check:
    name = f"access {ref}"
    bot = gitlab.whoami()
    try:
        project = _project(gitlab, ref)
    except NotFound:
        return Check(
            name,
            Verdict.FAIL,
            f"@{bot.username} cannot see {ref}: check the path and add it as "
            "Maintainer",
        )
    verdict, detail = role_verdict(
        _level(gitlab, project, bot.id),
        bot.username,
        project.path,
        mints_clone_tokens=settings.runtime == "kubernetes",
    )

    return Check(name, verdict, detail)


def project_hook(gitlab: Client, settings: Settings, ref: str) -> Check:
    name = f"webhook {ref}"
    url = f"{settings.public_url}/webhooks/gitlab"
    try:
        project = _project(gitlab, ref)
        hooks = gitlab.hooks(project)
    except NotFound:
        return Check(name, Verdict.FAIL, f"cannot see {ref} (see its access line)")
    except ConfigError:
        return Check(
            name,
            Verdict.WARN,
            "reading webhooks needs Maintainer: check in Settings > Webhooks that "
            f"{url} gets merge request and comment events, or make the bot "
            "Maintainer",
        )
    problems = hook_problems(hooks, url)
    if problems:
        return Check(
            name,
            Verdict.FAIL,
            f"{'; '.join(problems)}: run `rwbot hooks install {ref}`",
        )

    return Check(name, Verdict.OK, f"{url} gets merge request and comment events")


def oauth_app(settings: Settings, http: requests.Session) -> Check:
    name = "oauth"
    callback = f"{settings.public_url}/auth/callback"
    missing = [
        var
        for var, value in (
            ("RWBOT_OAUTH_CLIENT_ID", settings.oauth_client_id),
            ("RWBOT_OAUTH_CLIENT_SECRET", settings.oauth_client_secret),
        )
        if not value
    ]
    if missing or not settings.oauth_client_id or not settings.oauth_client_secret:
        return Check(
            name,
            Verdict.FAIL,
            f"{' and '.join(missing)} not set, so nobody can join: create a GitLab "
            f"application with callback URL {callback} and scopes {OAUTH_SCOPES}",
        )

    # A made-up code: Doorkeeper authenticates the client before it looks at
    # the code, so ``invalid_grant`` means id and secret are right.
    try:
        answer = http.post(
            f"{settings.gitlab_url}/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": f"rwbot-doctor-{secrets.token_hex(8)}",
                "redirect_uri": callback,
            },
            auth=(settings.oauth_client_id, settings.oauth_client_secret),
            allow_redirects=False,
            timeout=10,
        )
        if answer.status_code == 401 or "invalid_client" in answer.text:
            return Check(
                name,
                Verdict.FAIL,
                "GitLab does not accept RWBOT_OAUTH_CLIENT_ID and "
                "RWBOT_OAUTH_CLIENT_SECRET: copy both again from the application",
            )
        if answer.status_code >= 500:
            raise TemporaryError(
                f"GitLab answered {answer.status_code} to /oauth/token"
            )

        query = urlencode(
            {
                "client_id": settings.oauth_client_id,
                "redirect_uri": callback,
                "response_type": "code",
                "scope": OAUTH_SCOPES,
                "state": f"rwbot-doctor-{secrets.token_hex(8)}",
            }
        )
        authorize_url = f"{settings.gitlab_url}/oauth/authorize?{query}"
        answer = http.get(authorize_url, allow_redirects=False, timeout=10)
    except requests.RequestException as err:
        raise TemporaryError("GitLab unreachable (OAuth endpoints)") from err
    verdict, detail = authorize_verdict(
        answer.status_code,
        answer.headers.get("Location", ""),
        answer.text[:20000],
        callback,
        authorize_url,
    )
    if verdict is not Verdict.FAIL:
        detail = f"client id and secret accepted; {detail}"

    return Check(name, verdict, detail)


def runtime_workspace(
    make_runtime: Callable[[], Runtime],
    gitlab: Client,
    settings: Settings,
    ref: str | None,
) -> Check:
    name = f"runtime {settings.runtime}"
    try:
        runtime = make_runtime()
        runtime.ping()
    except TemporaryError as err:
        where = (
            "the cluster configuration"
            if settings.runtime == "kubernetes"
            else ("DOCKER_HOST and that the Docker or Podman service runs")
        )
        return Check(name, Verdict.FAIL, f"unreachable ({err}): check {where}")
    if ref is None:
        return Check(
            name,
            Verdict.WARN,
            "reachable; name a project (`rwbot doctor group/app`) to try a "
            "throwaway workspace",
        )
    try:
        project = _project(gitlab, ref)
    except BotError as err:
        return Check(
            name, Verdict.WARN, f"reachable; no throwaway workspace tried ({err})"
        )

    spec = _throwaway(settings, project)
    started = time.monotonic()
    try:
        verdict, detail = _try_workspace(runtime, spec, settings.start_timeout)
    finally:
        try:
            runtime.remove(spec.key)
        except Exception as err:
            log.exception("throwaway workspace not removed")
            verdict = Verdict.FAIL
            detail = (
                f"could not remove the throwaway workspace {spec.key.slug()} "
                f"({err}): remove it by hand"
            )
    if verdict is Verdict.OK:
        seconds = time.monotonic() - started
        detail = f"{detail} ({seconds:.1f}s from {project.path})"

    return Check(name, verdict, detail)


def store_schema(settings: Settings) -> Check:
    from bot.store import Store

    store = Store(settings.database_url)
    try:
        store.ping()
    except TemporaryError as err:
        if "schema" in str(err):
            return Check("store", Verdict.FAIL, f"{err}: run `rwbot migrate`")
        return Check(
            "store",
            Verdict.FAIL,
            f"{err}: check RWBOT_DATABASE_URL and that the database server runs",
        )
    finally:
        store.dispose()

    return Check("store", Verdict.OK, "reachable, schema up to date")


# -- runner -----------------------------------------------------------------------


def run(
    settings: Settings,
    projects: Sequence[str] = (),
    *,
    gitlab: Client | None = None,
    runtime: Runtime | None = None,
) -> list[Check]:
    """Every check for the ``projects`` given (default: ``RWBOT_PROJECTS``)."""
    from bot import runtime as runtimes

    served = list(projects) or list(settings.projects)
    client = gitlab or Client(settings)
    with requests.Session() as http:
        checks = [_guarded("gitlab token", lambda: gitlab_token(client, settings))]
        if not served:
            checks.append(
                Check(
                    "projects",
                    Verdict.WARN,
                    "none given: set RWBOT_PROJECTS or name them "
                    "(`rwbot doctor group/app`)",
                )
            )
        for ref in served:
            access = functools.partial(project_access, client, settings, ref)
            hook = functools.partial(project_hook, client, settings, ref)
            checks.append(_guarded(f"access {ref}", access))
            checks.append(_guarded(f"webhook {ref}", hook))
        checks.append(_guarded("oauth", lambda: oauth_app(settings, http)))
    checks.append(
        _guarded(
            f"runtime {settings.runtime}",
            lambda: runtime_workspace(
                lambda: runtime or runtimes.from_settings(settings),
                client,
                settings,
                served[0] if served else None,
            ),
        )
    )
    checks.append(_guarded("store", lambda: store_schema(settings)))

    return checks


def main(settings: Settings, projects: Sequence[str] = ()) -> int:
    """Print one line per check; return the exit code."""
    checks = run(settings, projects)
    for check in checks:
        print(check.line())
    failed = sum(check.verdict is Verdict.FAIL for check in checks)
    if failed:
        print(f"{failed} of {len(checks)} checks failed")

    return exit_code(checks)


def exit_code(checks: Sequence[Check]) -> int:
    """1 if any check failed; warnings alone still exit 0."""
    return 1 if any(check.verdict is Verdict.FAIL for check in checks) else 0


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    """Run one check; turn whatever it raises into its FAIL line."""
    try:
        return check()
    except TemporaryError as err:
        return Check(name, Verdict.FAIL, f"{err}: check RWBOT_GITLAB_URL and retry")
    except BotError as err:
        return Check(name, Verdict.FAIL, str(err))
    except Exception:
        log.exception("doctor check crashed", extra={"check": name})
        return Check(name, Verdict.FAIL, "unexpected error (the log has details)")


def _project(gitlab: Client, ref: str) -> Project:
    return gitlab.project(int(ref) if ref.isdigit() else ref)


def _level(gitlab: Client, project: Project, user_id: int) -> int | None:
    membership = gitlab.membership(project.id, user_id)
    return membership.access_level if membership else None


def _throwaway(settings: Settings, project: Project) -> Spec:
    """A workspace no merge request has: project id 0 and a random iid."""
    return Spec(
        key=WorkspaceKey(0, secrets.randbelow(10**9) + 1),
        generation=1,
        image=settings.workspace_image,
        source=Source(
            url=f"{settings.gitlab_url}/{project.path}.git",
            ref="HEAD",
            sha="",
            path=project.path,
            token=settings.gitlab_token,
        ),
        memory=settings.workspace_memory,
        cpus=settings.workspace_cpus,
        pids=settings.workspace_pids,
        network=settings.workspace_network,
        checkout_root=settings.workspace_root,
    )


def _try_workspace(runtime: Runtime, spec: Spec, timeout: float) -> tuple[Verdict, str]:
    try:
        runtime.ensure_running(spec)
        deadline = time.monotonic() + timeout
        status = runtime.status(spec.key)
        while status.phase is not Phase.RUNNING:
            if status.phase in (Phase.FAILED, Phase.STOPPED):
                return Verdict.FAIL, f"the throwaway workspace failed: {status.reason}"
            if time.monotonic() > deadline:
                return (
                    Verdict.FAIL,
                    f"the throwaway workspace did not start in {timeout:.0f}s",
                )
            time.sleep(0.5)
            status = runtime.status(spec.key)
        result = runtime.exec(spec.key, ["test", "-e", f"{spec.checkout_dir}/.git"])
    except BotError as err:
        return Verdict.FAIL, f"the throwaway workspace failed: {err}"
    if result.exit_code != 0:
        return Verdict.FAIL, "the throwaway workspace started without its checkout"

    return Verdict.OK, "created, ran a command in and removed a throwaway workspace"
