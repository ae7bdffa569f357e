"""Comment commands: which lines of an MR comment are commands, and who may run them.

Reviewers steer a workspace by commenting ``/workspace stop`` and the like. This
is the pure part: :func:`parse` turns a comment body into :class:`Command` values;
:func:`authorize`, :func:`may_grant` and :func:`may_revoke` decide whether the
commenter may run them. Nothing here talks to GitLab: the caller supplies the
commenter's access level.

What counts as a command, and why:

- One per line, like GitLab's quick actions. After at most three spaces the line
  starts with the exact (case-sensitive) prefix, then whitespace or the end of the
  line. The verb is case-insensitive; a bare prefix means ``help``.
- Text a reader does not see as a command never is one: fenced code (closed only
  by the same character, at least as long), indented code (four spaces or a tab),
  block quotes, and HTML comments. Comments are looked for on every line outside
  fenced code, more widely than CommonMark does, because missing a command is
  harmless and acting on hidden text is not.
  Spec: https://spec.commonmark.org/0.31.2/#fenced-code-blocks
- At most :data:`MAX_COMMANDS` per comment; later ones come back in
  :attr:`Parsed.ignored` so the caller can say so. Lines over :data:`MAX_LINE`
  characters are not commands.
- A bad argument never raises: the command carries ``error``, a reason written for
  the commenter. User text echoed in reasons is inline code, so it cannot turn
  into markup or mentions in the bot's reply.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from types import MappingProxyType

from bot.errors import ConfigError
from bot.settings import DEVELOPER, GUEST, MAINTAINER, REPORTER, SettingsError

DEFAULT_PREFIX = "/workspace"
PLANNER = 15
OWNER = 50
MAX_COMMANDS = 10
MAX_LINE = 1000
MAX_EXTEND = timedelta(days=365)
#: Access an invite grants; the first is the default.
ROLES = ("read", "write")
#: GitLab's role names (docs.gitlab.com/user/permissions/#roles).
ROLE_NAMES: Mapping[int, str] = MappingProxyType(
    {
        GUEST: "Guest",
        PLANNER: "Planner",
        REPORTER: "Reporter",
        DEVELOPER: "Developer",
        MAINTAINER: "Maintainer",
        OWNER: "Owner",
    }
)


class Verb(enum.StrEnum):
    HELP = "help"
    STATUS = "status"
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    REBUILD = "rebuild"
    SYNC = "sync"
    EXTEND = "extend"
    INVITE = "invite"
    REVOKE = "revoke"
    WHO = "who"
    DESTROY = "destroy"
    #: Not a command we know; the caller answers with :func:`help_text`.
    UNKNOWN = "unknown"


_USAGE: Mapping[Verb, tuple[str, str]] = {
    Verb.HELP: ("", "Show this message."),
    Verb.STATUS: ("", "Say what the workspace is doing."),
    Verb.START: ("", "Start the workspace."),
    Verb.STOP: ("", "Stop the workspace; its files are kept."),
    Verb.RESTART: ("", "Restart the workspace; its files are kept."),
    Verb.REBUILD: ("--confirm", "Build the workspace again from scratch."),
    Verb.SYNC: ("", "Bring the workspace up to date with the merge request."),
    Verb.EXTEND: ("<duration>", "Keep it running longer: `30m`, `2h`, `1d`, `1h30m`."),
    Verb.INVITE: ("@user [read\\|write]", "Let someone join; read-only by default."),
    Verb.REVOKE: ("@user", "Take back someone's access."),
    Verb.WHO: ("", "List who has access to the workspace."),
    Verb.DESTROY: ("[--confirm]", "Remove the workspace and its files."),
}

DEFAULT_PERMISSIONS: Mapping[Verb, int] = MappingProxyType(
    {
        Verb.HELP: REPORTER,
        Verb.STATUS: REPORTER,
        Verb.WHO: REPORTER,
        Verb.UNKNOWN: REPORTER,  # Who gets the help text for a mistyped command.
        Verb.START: DEVELOPER,
        Verb.STOP: DEVELOPER,
        Verb.RESTART: DEVELOPER,
        Verb.SYNC: DEVELOPER,
        Verb.EXTEND: DEVELOPER,
        Verb.INVITE: MAINTAINER,
        Verb.REVOKE: MAINTAINER,
        Verb.REBUILD: MAINTAINER,
        Verb.DESTROY: MAINTAINER,
    }
)
#: Verbs the merge request's author may run whatever their role: it is their work.
AUTHOR_VERBS = frozenset({Verb.INVITE, Verb.REVOKE, Verb.REBUILD, Verb.DESTROY})


@dataclass(frozen=True)
class Command:
    """One command line. ``args`` are the words after the verb (for ``UNKNOWN``,
    every word after the prefix); ``line`` is the source line without its
    indentation and trailing whitespace, for quoting back."""

    verb: Verb
    args: tuple[str, ...] = ()
    line: str = ""
    prefix: str = DEFAULT_PREFIX
    #: ``--confirm`` given (rebuild, destroy).
    confirm: bool = False
    duration: timedelta | None = None
    #: Username without ``@`` (invite, revoke).
    target: str | None = None
    #: ``read`` or ``write`` (invite).
    role: str | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        word = self.args[0] if self.verb is Verb.UNKNOWN and self.args else self.verb
        return f"{self.prefix} {word}"


@dataclass(frozen=True)
class Parsed:
    commands: tuple[Command, ...]
    #: Command lines beyond :data:`MAX_COMMANDS`, not parsed further.
    ignored: tuple[str, ...]


#: How a command went, for its reply and the award on its comment.
OK, REFUSED, FAILED = "ok", "refused", "failed"


@dataclass(frozen=True)
class Answer:
    """A command's outcome and the reply that explains it."""

    outcome: str
    text: str


@dataclass(frozen=True)
class Decision:
    allowed: bool
    #: Why not, for the commenter; empty when allowed.
    reason: str = ""


#: One word that cannot itself begin a quote, inline code or HTML; that way a
#: quoted line (``> /workspace``) or inline code fails the prefix test by itself.
_PREFIX = re.compile(r"[^\s>`<]\S*")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?", re.IGNORECASE)
_USERNAME = re.compile(r"@?([A-Za-z0-9][A-Za-z0-9_.-]{0,254})")


def parse(body: str, prefix: str = DEFAULT_PREFIX) -> list[Command]:
    """The commands in a comment body, in order; see the module docstring."""
    return list(parse_comment(body, prefix).commands)


def parse_comment(body: str, prefix: str = DEFAULT_PREFIX) -> Parsed:
    """Like :func:`parse`, also returning the command lines over the limit."""
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"command prefix {prefix!r}: must be one word, not starting with >, ` or <"
        )

    commands: list[Command] = []
    ignored: list[str] = []
    fence: str | None = None
    in_comment = False
    for raw in _LINE_BREAK.split(body):
        if fence is not None:
            fence = None if _closes(raw, fence) else fence
            continue
        if in_comment:
            # A line that starts inside a comment is all HTML, even after `-->`.
            _, in_comment = _hide_comments(raw, in_comment=True)
            continue
        fence = _opens_fence(raw)
        if fence is not None:
            continue

        visible, in_comment = _hide_comments(raw, in_comment=False)
        indent = len(raw) - len(raw.lstrip(" "))
        if len(raw) > MAX_LINE or indent > 3:
            continue
        if not (raw.startswith(prefix, indent) and visible.startswith(prefix, indent)):
            continue
        rest = visible[indent + len(prefix) :]
        if rest and not rest[0].isspace():
            continue

        line = raw[indent:].rstrip()
        if len(commands) < MAX_COMMANDS:
            commands.append(_command(line, rest.split(), prefix))
        else:
            ignored.append(line)
    return Parsed(tuple(commands), tuple(ignored))


def _opens_fence(raw: str) -> str | None:
    match = _FENCE.fullmatch(raw)
    if match is None or (match[1][0] == "`" and "`" in match[2]):
        return None  # A backtick fence's info string cannot hold a backtick.
    return match[1]


def _closes(raw: str, fence: str) -> bool:
    match = _FENCE.fullmatch(raw)
    return (
        match is not None
        and match[1][0] == fence[0]
        and len(match[1]) >= len(fence)
        and not match[2].strip(" \t")
    )


def _hide_comments(text: str, *, in_comment: bool) -> tuple[str, bool]:
    """``text`` without its HTML comments, and whether one is still open."""
    visible: list[str] = []
    pos = 0
    while True:
        if in_comment:
            end = text.find("-->", pos)
            if end < 0:
                return "".join(visible), True
            pos, in_comment = end + 3, False
        else:
            start = text.find("<!--", pos)
            if start < 0:
                return "".join([*visible, text[pos:]]), False
            visible.append(text[pos:start])
            pos, in_comment = start + 4, True


def _command(line: str, words: list[str], prefix: str) -> Command:
    if not words:
        return Command(Verb.HELP, (), line, prefix)
    verb = _verb(words[0])
    if verb is None or verb is Verb.UNKNOWN:
        reason = f"{_code(prefix + ' ' + words[0])} is not a command."
        return Command(Verb.UNKNOWN, tuple(words), line, prefix, error=reason)

    command = Command(verb, tuple(words[1:]), line, prefix)
    return _ARGUMENTS.get(command.verb, _no_arguments)(command)


def _verb(word: str) -> Verb | None:
    try:
        return Verb(word.lower())
    except ValueError:
        return None


def _no_arguments(c: Command) -> Command:
    return replace(c, error=f"{_code(c.name)} takes no arguments.") if c.args else c


def _confirm(c: Command) -> Command:
    if c.args == ("--confirm",):
        return replace(c, confirm=True)
    return replace(c, error=f"{_code(c.name)} takes only `--confirm`.") if c.args else c


def _extend(c: Command) -> Command:
    if len(c.args) != 1:
        return replace(c, error=f"{_code(c.name)} needs one duration, such as `2h`.")
    duration = _duration(c.args[0])
    if isinstance(duration, str):
        return replace(c, error=duration)
    return replace(c, duration=duration)


def _duration(text: str) -> timedelta | str:
    """The duration, or why it is not one. A bare number is refused rather than
    guessed: reading `90` as minutes or hours is wrong for half the people."""
    if text.isascii() and text.isdigit():
        return f"Give {_code(text)} a unit: `{text}m` for minutes, `{text}h` for hours."
    match = _DURATION.fullmatch(text)
    if match is None or not text:
        return f"{_code(text)} is not a duration; write it like `30m`, `2h` or `1d`."
    days, hours, minutes = (int(group or 0) for group in match.groups())
    total = (days * 24 + hours) * 60 + minutes  # Before timedelta, which overflows.
    if total == 0:
        return "The duration must be longer than zero."
    if total > MAX_EXTEND // timedelta(minutes=1):
        return f"The duration can be at most {MAX_EXTEND.days} days."
    return timedelta(minutes=total)


def _invite(c: Command) -> Command:
    if len(c.args) not in (1, 2):
        return replace(
            c, error=f"{_code(c.name)} needs a user, then optionally `read` or `write`."
        )
    role = c.args[1].lower() if len(c.args) == 2 else ROLES[0]
    c = _with_target(c)
    if role not in ROLES:
        reason = f"{_code(c.args[1])} is not an access; use `read` or `write`."
        return replace(c, error=c.error or reason)
    return replace(c, role=role)


def _revoke(c: Command) -> Command:
    if len(c.args) != 1:
        return replace(c, error=f"{_code(c.name)} needs exactly one user.")
    return _with_target(c)


def _with_target(c: Command) -> Command:
    match = _USERNAME.fullmatch(c.args[0])
    if match is None:
        return replace(c, error=f"{_code(c.args[0])} is not a GitLab username.")
    return replace(c, target=match[1])


_ARGUMENTS: Mapping[Verb, Callable[[Command], Command]] = {
    Verb.HELP: lambda c: c,  # Asking for help never earns an error.
    Verb.REBUILD: _confirm,
    Verb.DESTROY: _confirm,
    Verb.EXTEND: _extend,
    Verb.INVITE: _invite,
    Verb.REVOKE: _revoke,
}


def authorize(
    command: Command,
    *,
    access_level: int | None,
    is_author: bool,
    permissions: Mapping[Verb, int] = DEFAULT_PERMISSIONS,
    author_verbs: frozenset[Verb] = AUTHOR_VERBS,
) -> Decision:
    """May the commenter run ``command``? ``access_level`` is their GitLab level
    on the project, ``None`` for non-members. A verb missing from ``permissions``
    is refused to everyone, so a partial mapping fails closed."""
    needed = permissions.get(command.verb)
    if needed is None:
        return Decision(False, f"{_code(command.name)} is turned off here.")
    as_author = command.verb in author_verbs
    if (access_level is not None and access_level >= needed) or (
        as_author and is_author
    ):
        return Decision(True)

    author = ", or being the merge request's author" if as_author else ""
    return Decision(
        False,
        f"{_code(command.name)} needs {_needs(needed)} on this project"
        f"{author}; {_you_have(access_level)}.",
    )


def may_grant(
    role: str,
    commenter_level: int | None,
    read_level: int = REPORTER,
    write_level: int = DEVELOPER,
) -> Decision:
    """May the commenter invite someone with ``role``? Nobody grants more than
    they have, so an author who is only a Reporter cannot hand out write access."""
    needed = dict(zip(ROLES, (read_level, write_level), strict=True)).get(role)
    if needed is None:
        return Decision(
            False, f"{_code(role)} is not an access; use `read` or `write`."
        )
    if commenter_level is not None and commenter_level >= needed:
        return Decision(True)

    return Decision(
        False,
        f"Granting {role} access needs {_needs(needed)} on this project, "
        f"as nobody may grant more than they have; {_you_have(commenter_level)}.",
    )


def may_revoke(
    target: str,
    target_level: int | None,
    target_role: str | None,
    commenter_level: int | None,
    read_level: int = REPORTER,
    write_level: int = DEVELOPER,
) -> Decision:
    """May the commenter take ``target``'s access away? Only access they could
    have granted (``target_role``: what the target's level or an invite gives),
    and only from someone whose role is not above their own, so an author who
    is a Reporter, or not a member at all, cannot lock out a Maintainer."""
    if target_level is not None and (
        commenter_level is None or target_level > commenter_level
    ):
        return Decision(
            False,
            f"{_code(target)} has {_role(target_level)}; revoking their access "
            f"needs at least that role on this project, as nobody may take more "
            f"than they could give; {_you_have(commenter_level)}.",
        )
    if target_role is None:
        return Decision(True)

    grant = may_grant(target_role, commenter_level, read_level, write_level)
    if grant.allowed:
        return Decision(True)
    needed = read_level if target_role == ROLES[0] else write_level
    return Decision(
        False,
        f"{_code(target)} has {target_role} access; revoking it needs "
        f"{_needs(needed)} on this project, as nobody may take more than they "
        f"could give; {_you_have(commenter_level)}.",
    )


def parse_permissions(
    text: str, *, variable: str = "RWBOT_COMMAND_PERMISSIONS"
) -> Mapping[Verb, int]:
    """The defaults overridden by ``text`` such as ``"start=40,stop=developer"``.
    Levels are GitLab numbers or role names. Raises :class:`SettingsError` naming
    ``variable`` and the bad entry, so start-up stops with one clear line."""
    levels = dict(DEFAULT_PERMISSIONS)
    seen: set[Verb] = set()
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = (part.strip() for part in entry.partition("="))
        verb = _verb(name)
        if not equals or verb is None:
            verbs = ", ".join(Verb)
            raise SettingsError(f"{variable}: {entry!r}: expected <{verbs}>=<level>")
        if verb in seen:
            raise SettingsError(f"{variable}: {entry!r}: {name} is given twice")
        seen.add(verb)
        levels[verb] = _level(variable, entry, value)
    return MappingProxyType(levels)


def _level(variable: str, entry: str, value: str) -> int:
    by_name = {name.lower(): level for level, name in ROLE_NAMES.items()}
    level = by_name.get(value.lower())
    if level is None and value.isascii() and value.isdigit():
        level = int(value) if int(value) in ROLE_NAMES else None
    if level is None:
        known = ", ".join(f"{name} ({n})" for n, name in ROLE_NAMES.items())
        raise SettingsError(f"{variable}: {entry!r}: level must be one of {known}")
    return level


def help_text(
    prefix: str = DEFAULT_PREFIX,
    *,
    permissions: Mapping[Verb, int] = DEFAULT_PERMISSIONS,
    author_verbs: frozenset[Verb] = AUTHOR_VERBS,
) -> str:
    """Markdown usage: every command, its arguments and who may run it."""
    rows = []
    for verb, (arguments, summary) in _USAGE.items():
        level = permissions.get(verb)
        who = "nobody (turned off)" if level is None else f"{_role(level)} or above"
        if level is not None and verb in author_verbs:
            who += ", or the merge request's author"
        usage = f"{prefix} {verb} {arguments}".rstrip()
        rows.append(f"| `{usage}` | {summary} | {who} |")
    return (
        f"Comment one command per line, at most {MAX_COMMANDS} in a comment:\n\n"
        "| Command | What it does | Who may run it |\n"
        "|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def _role(level: int) -> str:
    return ROLE_NAMES.get(level, f"access level {level}")


def _needs(level: int) -> str:
    name = ROLE_NAMES.get(level)
    return f"the {name} role" if name else f"access level {level}"


def _you_have(level: int | None) -> str:
    if level is None:
        return "you are not a member of this project"
    return f"you have {_role(level)}"


def _code(text: str) -> str:
    """``text`` as inline code, fenced by more backticks than it holds."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    fence = "`" * (longest + 1)
    return f"{fence}{pad}{text}{pad}{fence}"
