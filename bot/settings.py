"""Typed settings, read once from ``RWBOT_``-prefixed environment variables.

Everything the bot can be told lives in :class:`Settings`. :func:`from_env` parses
and validates it at start-up; a missing or bad value raises :class:`SettingsError`
whose message names the variable, so the process stops with one clear line instead
of failing later inside a request. Secrets may be given as ``RWBOT_X`` or, to keep
them out of the environment of child processes, as ``RWBOT_X_FILE`` pointing at a
file that holds the value.

Tests build a ``Settings`` directly (see ``tests/conftest.py``) rather than
patching the environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy.exc import ArgumentError

from bot.errors import ConfigError

PREFIX = "RWBOT_"

# GitLab access levels (docs.gitlab.com/api/members, "Roles").
GUEST = 10
REPORTER = 20
DEVELOPER = 30
MAINTAINER = 40


class SettingsError(ConfigError):
    """A configuration value is missing or invalid; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Everything the bot is configured with. Build with :func:`from_env`."""

    gitlab_url: str
    gitlab_token: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    public_url: str
    database_url: str = "sqlite:///rwbot.db"
    runtime: str = "docker"
    workspace_image: str = "localhost/rwbot-workspace:latest"

    #: Standard Webhooks signing secret (``whsec_…``); when set, signatures are
    #: required in addition to ``X-Gitlab-Token``.
    webhook_signing_secret: str | None = field(default=None, repr=False)
    #: Projects (ids or paths) whose open MRs the resync looks for; projects that
    #: have sent a webhook are served as well.
    projects: tuple[str, ...] = ()
    start_drafts: bool = True
    #: Seconds between resyncs against GitLab and the runtime.
    resync_interval: float = 300.0
    #: Seconds a worker may hold a claimed workspace before others may take it.
    claim_lease: float = 120.0
    #: Backoff after a temporary failure: base seconds, doubled per attempt, capped.
    retry_base: float = 2.0
    retry_max: float = 300.0
    #: Distinguishes this installation's containers from any other on the host.
    instance: str = "default"
    workspace_network: str = "bridge"
    workspace_memory: str = "2g"
    workspace_cpus: float = 2.0
    workspace_pids: int = 1024
    #: Where the checkout lives inside the workspace: ``<root>/<project path>``.
    workspace_root: str = "/workspace"
    #: Seconds to wait for a new workspace to come up before calling it failed.
    start_timeout: float = 120.0
    log_format: str = "plain"
    log_level: str = "INFO"
    #: Signs session cookies; generated per process when unset (sessions then do
    #: not survive restarts and several replicas cannot share them).
    session_secret: str = field(
        default_factory=lambda: secrets.token_hex(32), repr=False
    )
    #: Largest webhook body accepted, in bytes (GitLab's own limit is 25 MB).
    max_body_bytes: int = 25 * 1024 * 1024
    #: GitLab OAuth application for reviewers' sign-in; joining is disabled
    #: (the join page says so) until both are set.
    oauth_client_id: str | None = None
    oauth_client_secret: str | None = field(default=None, repr=False)
    #: Lowest GitLab access level that may join read-only, and read-write.
    read_level: int = REPORTER
    write_level: int = DEVELOPER
    #: What a devfile may ask for: image patterns (fnmatch; empty: any) and
    #: the most memory and CPU (Kubernetes quantities, e.g. 8Gi and 4).
    devfile_images: tuple[str, ...] = ()
    devfile_max_memory: str | None = "8Gi"
    devfile_max_cpu: str | None = "4"
    #: Name of each workspace's GitLab environment; ``{iid}`` is the MR's iid.
    #: Empty: no environments (the MR widget shows no "View app").
    environment_name: str = "review-workspace/mr-{iid}"
    #: Domain under which each devfile endpoint gets a host of its own
    #: (``<endpoint>--<workspace>.<domain>``, wildcard DNS and certificate
    #: pointing at the bot); empty: endpoints are not exposed.
    endpoints_domain: str = ""
    #: Prefix of comment commands.
    command_prefix: str = "/workspace"
    #: Lowest access level per command verb; see ``bot.commands``.
    command_permissions: Mapping[str, int] | None = None
    #: Seconds without anyone connected before a workspace stops.
    idle_timeout: float = 8 * 3600
    #: Seconds after start before a workspace is destroyed.
    max_lifetime: float = 7 * 86400
    #: How far ``extend`` may push a workspace's expiry, counted from its start.
    max_extended_lifetime: float = 30 * 86400
    #: How long before an idle stop or expiry the comment warns.
    warn_before: float = 3600
    #: The bot user's id, learnt from the token at start; events it caused are
    #: ignored. ``None`` until :func:`bot.gitlab.Client.whoami` has run.
    bot_user_id: int | None = None

    def with_overrides(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _read(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(PREFIX + name)
    path = env.get(PREFIX + name + "_FILE")
    if value is not None and path is not None:
        raise SettingsError(f"{PREFIX}{name}: set it or {PREFIX}{name}_FILE, not both")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as err:
            raise SettingsError(
                f"{PREFIX}{name}_FILE: cannot read {path}: {err.strerror}"
            ) from err
    return value


def _required(env: Mapping[str, str], name: str) -> str:
    value = _read(env, name)
    if not value:
        raise SettingsError(f"{PREFIX}{name} is required")
    return value


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{PREFIX}{name}: expected an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _number(name: str, value: str | None, default: float, minimum: float) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(
            f"{PREFIX}{name}: expected a number, got {value!r}"
        ) from None
    if number < minimum:
        raise SettingsError(f"{PREFIX}{name}: must be at least {minimum}, got {value}")
    return number


def _bool(name: str, value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{PREFIX}{name}: expected true or false, got {value!r}")


def _choice(
    name: str, value: str | None, default: str, choices: tuple[str, ...]
) -> str:
    if value is None or value == "":
        return default
    if value not in choices:
        raise SettingsError(f"{PREFIX}{name}: expected one of {', '.join(choices)}")
    return value


#: SQLAlchemy drivers the bot is built and tested with.
DATABASE_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")


def _database_url(value: str | None) -> str:
    """An SQLAlchemy URL with a supported driver; the message never repeats
    the value, which may hold a password."""
    if not value:
        return "sqlite:///rwbot.db"
    from sqlalchemy.engine import make_url

    supported = "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise SettingsError(
            f"{PREFIX}DATABASE_URL: not a database URL; expected {supported}"
        ) from None
    if url.drivername not in DATABASE_DRIVERS:
        raise SettingsError(
            f"{PREFIX}DATABASE_URL: driver {url.drivername} is not supported;"
            f" expected {supported}"
        )
    return value


_INSTANCE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_MEMORY = re.compile(r"^[0-9]+[kmg]?$")


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate the configuration; raise :class:`SettingsError` if wrong."""
    env = os.environ if env is None else env
    signing = _read(env, "WEBHOOK_SIGNING_SECRET") or None
    if signing is not None and not signing.startswith("whsec_"):
        raise SettingsError(f"{PREFIX}WEBHOOK_SIGNING_SECRET: expected a whsec_ secret")

    instance = env.get(PREFIX + "INSTANCE", "default")
    if not _INSTANCE.match(instance):
        raise SettingsError(
            f"{PREFIX}INSTANCE: lower-case letters, digits and '-' only"
        )
    memory = env.get(PREFIX + "WORKSPACE_MEMORY", "2g").lower()
    if not _MEMORY.match(memory):
        raise SettingsError(f"{PREFIX}WORKSPACE_MEMORY: expected e.g. 512m or 2g")
    projects = tuple(
        p.strip() for p in env.get(PREFIX + "PROJECTS", "").split(",") if p.strip()
    )

    settings = Settings(
        gitlab_url=_url("GITLAB_URL", _required(env, "GITLAB_URL")),
        gitlab_token=_required(env, "GITLAB_TOKEN"),
        webhook_secret=_required(env, "WEBHOOK_SECRET"),
        public_url=_url("PUBLIC_URL", _required(env, "PUBLIC_URL")),
        database_url=_database_url(env.get(PREFIX + "DATABASE_URL")),
        runtime=_choice(
            "RUNTIME", env.get(PREFIX + "RUNTIME"), "docker", ("docker", "kubernetes")
        ),
        workspace_image=env.get(PREFIX + "WORKSPACE_IMAGE")
        or "localhost/rwbot-workspace:latest",
        webhook_signing_secret=signing,
        projects=projects,
        start_drafts=_bool("START_DRAFTS", env.get(PREFIX + "START_DRAFTS"), True),
        resync_interval=_number(
            "RESYNC_INTERVAL", env.get(PREFIX + "RESYNC_INTERVAL"), 300.0, 1.0
        ),
        claim_lease=_number("CLAIM_LEASE", env.get(PREFIX + "CLAIM_LEASE"), 120.0, 1.0),
        retry_base=_number("RETRY_BASE", env.get(PREFIX + "RETRY_BASE"), 2.0, 0.01),
        retry_max=_number("RETRY_MAX", env.get(PREFIX + "RETRY_MAX"), 300.0, 0.1),
        instance=instance,
        workspace_network=env.get(PREFIX + "WORKSPACE_NETWORK") or "bridge",
        workspace_memory=memory,
        workspace_cpus=_number(
            "WORKSPACE_CPUS", env.get(PREFIX + "WORKSPACE_CPUS"), 2.0, 0.1
        ),
        workspace_pids=int(
            _number("WORKSPACE_PIDS", env.get(PREFIX + "WORKSPACE_PIDS"), 1024, 16)
        ),
        start_timeout=_number(
            "START_TIMEOUT", env.get(PREFIX + "START_TIMEOUT"), 120.0, 1.0
        ),
        log_format=_choice(
            "LOG_FORMAT", env.get(PREFIX + "LOG_FORMAT"), "plain", ("plain", "json")
        ),
        log_level=_choice(
            "LOG_LEVEL",
            (env.get(PREFIX + "LOG_LEVEL") or "").upper() or None,
            "INFO",
            ("DEBUG", "INFO", "WARNING", "ERROR"),
        ),
    )
    read_level = int(_number("READ_LEVEL", env.get(PREFIX + "READ_LEVEL"), REPORTER, 5))
    write_level = int(
        _number("WRITE_LEVEL", env.get(PREFIX + "WRITE_LEVEL"), DEVELOPER, 5)
    )
    if write_level < read_level:
        raise SettingsError(
            f"{PREFIX}WRITE_LEVEL: must not be below {PREFIX}READ_LEVEL"
        )
    timers = {
        name.lower(): _number(name, env.get(PREFIX + name), default, 60)
        for name, default in (
            ("IDLE_TIMEOUT", 8 * 3600),
            ("MAX_LIFETIME", 7 * 86400),
            ("MAX_EXTENDED_LIFETIME", 30 * 86400),
            ("WARN_BEFORE", 3600),
        )
    }
    if timers["max_extended_lifetime"] < timers["max_lifetime"]:
        raise SettingsError(
            f"{PREFIX}MAX_EXTENDED_LIFETIME: must not be below {PREFIX}MAX_LIFETIME"
        )
    permissions_text = env.get(PREFIX + "COMMAND_PERMISSIONS")
    if permissions_text:
        from bot.commands import parse_permissions

        settings = settings.with_overrides(
            command_permissions=parse_permissions(permissions_text)
        )
    environment = env.get(PREFIX + "ENVIRONMENT_NAME", "review-workspace/mr-{iid}")
    _environment_name(environment)
    settings = settings.with_overrides(environment_name=environment)
    from bot.devfile import quantity

    for name, default in (("DEVFILE_MAX_MEMORY", "8Gi"), ("DEVFILE_MAX_CPU", "4")):
        value = env.get(PREFIX + name, default)
        if value and not quantity.is_valid(value):
            raise SettingsError(f"{PREFIX}{name}: expected a quantity like 8Gi or 4")
        settings = settings.with_overrides(**{name.lower(): value or None})
    images = tuple(
        p.strip()
        for p in env.get(PREFIX + "DEVFILE_IMAGES", "").split(",")
        if p.strip()
    )
    settings = settings.with_overrides(devfile_images=images)
    prefix = env.get(PREFIX + "COMMAND_PREFIX") or "/workspace"
    if not re.fullmatch(r"/[A-Za-z0-9_-]{1,32}", prefix):
        raise SettingsError(f"{PREFIX}COMMAND_PREFIX: expected e.g. /workspace")
    settings = settings.with_overrides(command_prefix=prefix, **timers)
    settings = settings.with_overrides(
        oauth_client_id=_read(env, "OAUTH_CLIENT_ID") or None,
        oauth_client_secret=_read(env, "OAUTH_CLIENT_SECRET") or None,
        read_level=read_level,
        write_level=write_level,
    )
    settings = settings.with_overrides(
        endpoints_domain=_endpoints_domain(
            env.get(PREFIX + "ENDPOINTS_DOMAIN", ""), settings.public_url
        )
    )
    session_secret = _read(env, "SESSION_SECRET")
    if session_secret:
        settings = settings.with_overrides(session_secret=session_secret)
    return settings


# GitLab's ``Gitlab::Regex.environment_name_regex``: letters, digits, spaces and
# - _ / $ { } . , not starting or ending with "/"; ``Environment`` allows 255.
_ENVIRONMENT_NAME = re.compile(
    r"[A-Za-z0-9 _.${}-]([A-Za-z0-9 _./${}-]*[A-Za-z0-9 _.${}-])?"
)
_ENVIRONMENT_NAME_MAX = 255


def _environment_name(template: str) -> None:
    """Refuse a template whose names GitLab would refuse, or that gives two
    MRs the same environment: checked on the names it makes, not the text."""
    if not template:
        return  # no environments

    name = f"{PREFIX}ENVIRONMENT_NAME"
    try:
        # The smallest and the largest iid GitLab hands out (a 32-bit int).
        names = [template.format(iid=iid) for iid in (1, 2, 2**31 - 1)]
    except (KeyError, IndexError, ValueError, AttributeError) as err:
        raise SettingsError(
            f"{name}: may use only {{iid}} as a placeholder ({err!r})"
        ) from None
    if len(set(names)) < len(names):
        raise SettingsError(f"{name}: must contain {{iid}}, one environment per MR")
    for made in names:
        if len(made) > _ENVIRONMENT_NAME_MAX or not _ENVIRONMENT_NAME.fullmatch(made):
            raise SettingsError(
                f"{name}: {made!r} is not a GitLab environment name (letters, "
                "digits, spaces, - _ / $ { } . ; 255 at most; not starting or "
                "ending with /)"
            )


def _endpoints_domain(value: str, public_url: str) -> str:
    """A lower-case DNS name that neither is nor contains the bot's own host:
    endpoints serve the MR's code, which must never share the bot's origin."""
    from bot import endpoints

    domain = value.strip().lower().rstrip(".")
    if not domain:
        return ""
    if not endpoints.is_domain(domain):
        raise SettingsError(
            f"{PREFIX}ENDPOINTS_DOMAIN: expected a DNS name like endpoints.example.com"
        )
    bot_host = (urlsplit(public_url).hostname or "").lower()
    if bot_host == domain or bot_host.endswith("." + domain):
        raise SettingsError(
            f"{PREFIX}ENDPOINTS_DOMAIN: must not hold the bot's own host {bot_host}"
        )
    return domain
