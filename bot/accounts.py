"""Linux accounts for GitLab reviewers, and the argv of the in-workspace tool.

Pure: no I/O. The runtime module execs what the ``*_argv`` functions return (as an
argument list, never a shell string); ``bot/workspace/rwctl.sh`` is the tool that
runs them inside the workspace and checks every value again.

Name mapping (:func:`linux_name`):

- A GitLab username that already is a good Linux name once lower-cased (ASCII
  letters, digits, ``_`` and ``-``, starting with a letter, ending with a letter or
  digit, at most 32 characters, not reserved) is used as it is, so ``whoami``
  shows the GitLab username.
- Anything else (a ``.``, a leading digit, more than 32 characters, a reserved name
  such as ``root``) becomes ``_<stem>-<id>``: the stem is the lower-cased username
  with every other character turned into ``_``, cut so the whole fits in 32. The
  leading ``_`` keeps these apart from the names used as they are, and the GitLab
  id after the last ``-`` keeps two people apart from each other.
- :func:`fallback_name` (``_gl<id>``) is for when the tool refuses the primary
  name because the image already has such an account.

GitLab usernames are unique regardless of case, so two current GitLab users never
share a name. A name freed by a rename and taken by someone else is refused by
the tool (its records remember whose it was) and the bot uses the fallback.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

TOOL_PATH = "/opt/rwbot/rwctl"
SHARED_GROUP = "rwbot-write"
# The group that may write the checkout. Above the system range (< 1000) and
# below UID_BASE, so it never meets a reviewer's own group (gid = uid).
SHARED_GID = 4242
UID_BASE = 100000
MAX_UID = 2**31 - 1
MAX_NAME_LENGTH = 32
MAX_GIT_NAME_LENGTH = 255

#: How a workspace picks reviewers' uids: ``gitlab-id`` is :func:`uid_for`, the
#: same in every workspace; ``auto`` lets the tool pick the lowest free uid from
#: 10000 and record it, for workspaces that map only 65,536 uids (a user
#: namespace). Either way a uid, once recorded, never goes to another person.
UidPolicy = Literal["gitlab-id", "auto"]

# The tool's exit codes.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3

# The same list as RESERVED_NAMES in rwctl.sh (a test keeps them equal).
_RESERVED_TEXT = """
root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc
gnats nobody nogroup _apt messagebus sshd postgres mysql admin administrator adm
operator staff users sudo wheel shadow utmp tty disk kmem dialout cdrom floppy
audio video plugdev netdev input kvm render sgx src voice fax tape git
gitlab-runner ftp halt shutdown polkitd avahi dnsmasq uuidd tss systemd
"""
RESERVED_NAMES = frozenset(_RESERVED_TEXT.split())
RESERVED_PREFIXES = ("rwbot", "systemd-")

_LINUX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_AS_IS = re.compile(r"[a-z](?:[a-z0-9_-]{0,30}[a-z0-9])?")
_ASCII_USERNAME = re.compile(r"[A-Za-z0-9_.-]+")
_STEM_CHAR = re.compile(r"[^a-z0-9_-]")
_EMAIL_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_EMAIL = re.compile(rf"[A-Za-z0-9._%+-]+@{_EMAIL_LABEL}(?:\.{_EMAIL_LABEL})*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_KEY_BLOB = re.compile(r"[A-Za-z0-9+/]{16,}={0,3}")


class Role(enum.Enum):
    """What a reviewer may do to the checkout."""

    READ = "read"
    WRITE = "write"


def is_reserved(name: str) -> bool:
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES)


def is_valid_name(name: str) -> bool:
    """A name the tool accepts: the Linux name pattern and not reserved."""
    return _LINUX_NAME.fullmatch(name) is not None and not is_reserved(name)


def uid_for(gitlab_user_id: int) -> int:
    """The reviewer's uid in every workspace; tied to the GitLab id for good."""
    uid = UID_BASE + gitlab_user_id
    if gitlab_user_id < 1 or uid > MAX_UID:
        raise ValueError(f"GitLab user id out of range: {gitlab_user_id}")

    return uid


def linux_name(gitlab_username: str, gitlab_user_id: int) -> str:
    """The reviewer's Linux name (see the module docstring for the rules)."""
    uid_for(gitlab_user_id)  # rejects ids the name could not carry
    if _ASCII_USERNAME.fullmatch(gitlab_username):
        lowered = gitlab_username.lower()
        if _AS_IS.fullmatch(lowered) and not is_reserved(lowered):
            return lowered

    suffix = f"-{gitlab_user_id}"
    stem = "".join(
        c.lower() if c.isascii() else "_" for c in gitlab_username[:MAX_NAME_LENGTH]
    )
    stem = _STEM_CHAR.sub("_", stem) or "gl"

    return "_" + stem[: MAX_NAME_LENGTH - 1 - len(suffix)] + suffix


def fallback_name(gitlab_user_id: int) -> str:
    """A second name for when the image already has an account with the first."""
    uid_for(gitlab_user_id)

    return f"_gl{gitlab_user_id}"


def no_reply_email(username: str, user_id: int, gitlab_host: str) -> str:
    """GitLab's private commit address for a user who shows no email."""
    return f"{user_id}-{username}@users.noreply.{gitlab_host.lower()}"


def is_valid_email(email: str) -> bool:
    """The tool's own rule: plain local part, DNS-style domain, at most 254."""
    return len(email) <= 254 and _EMAIL.fullmatch(email) is not None


def git_email(user_info: Mapping[str, object], gitlab_host: str) -> str:
    """The address for the reviewer's commits, from GitLab's ``/users/:id``.

    The commit email if set, else the public email, else the no-reply address;
    an address the tool would refuse is skipped.
    """
    for field in ("commit_email", "public_email"):
        value = user_info.get(field)
        if isinstance(value, str) and is_valid_email(value):
            return value

    return no_reply_email(
        str(user_info["username"]), int(str(user_info["id"])), gitlab_host
    )


def git_name(user_info: Mapping[str, object]) -> str:
    """The reviewer's display name as the tool accepts it, else the username."""
    name = _CONTROL.sub(" ", str(user_info.get("name") or "")).strip()

    return name[:MAX_GIT_NAME_LENGTH] or str(user_info["username"])


def usable_keys(keys: Iterable[str]) -> list[str]:
    """The SSH public keys the tool accepts: ``TYPE BASE64 [COMMENT]``, one line."""
    usable = []
    for key in keys:
        key = key.strip()
        parts = key.split(" ", 2)
        if (
            len(parts) >= 2
            and parts[0] in _KEY_TYPES
            and _KEY_BLOB.fullmatch(parts[1])
            and not _CONTROL.search(key)
            and len(key) <= 16384
        ):
            usable.append(key)

    return usable


def run_argv(
    command: str, directory: str, log: str, group: str = SHARED_GROUP
) -> list[str]:
    """Run a devfile's postStart ``command`` in ``directory`` as the tool's own
    devfile account (never root, never a reviewer; a member of ``group``, so it
    may write the checkout), its output appended to ``log``."""
    return [
        TOOL_PATH,
        "run",
        "--group",
        group,
        "--directory",
        directory,
        "--log",
        log,
        "--command",
        command,
    ]


def init_argv(
    checkout: str, group: str = SHARED_GROUP, gid: int = SHARED_GID
) -> list[str]:
    return [
        TOOL_PATH,
        "init",
        "--checkout",
        checkout,
        "--group",
        group,
        "--gid",
        str(gid),
    ]


def adduser_argv(
    *,
    name: str,
    gitlab_user_id: int,
    gitlab_username: str,
    role: Role,
    git_name: str,
    git_email: str,
    keys: Iterable[str] = (),
    group: str = SHARED_GROUP,
    uid: UidPolicy = "gitlab-id",
) -> list[str]:
    """``uid`` is the workspace's :data:`UidPolicy`: the uid tied to the GitLab
    id, or ``auto`` for the tool to choose."""
    argv = [
        TOOL_PATH,
        "adduser",
        "--uid",
        "auto" if uid == "auto" else str(uid_for(gitlab_user_id)),
        "--name",
        name,
        "--gitlab-id",
        str(gitlab_user_id),
        "--gitlab-username",
        gitlab_username,
        "--role",
        role.value,
        "--git-name",
        git_name,
        "--git-email",
        git_email,
        "--group",
        group,
    ]
    for key in keys:
        argv += ["--key", key]

    return argv


def shell_argv(
    name: str, command: str | None = None, session: str | None = None
) -> list[str]:
    """Start a login shell as ``name``; ``session`` lets :func:`end_argv` end it."""
    argv = [TOOL_PATH, "shell", "--name", name]
    if command is not None:
        argv += ["--command", command]
    if session is not None:
        argv += ["--session", session]

    return argv


def end_argv(session: str) -> list[str]:
    """End the shell started with ``--session session`` (the tab was closed)."""
    return [TOOL_PATH, "end", "--session", session]


def lock_argv(name: str) -> list[str]:
    return [TOOL_PATH, "lock", "--name", name]


def users_argv() -> list[str]:
    return [TOOL_PATH, "users"]


def name_refused(exit_code: int, stderr: str) -> bool:
    """Whether ``adduser`` refused the name itself (the fallback name may work)."""
    return exit_code == EXIT_REFUSED and "name-taken" in stderr


@dataclass(frozen=True)
class WorkspaceUser:
    """One line of ``rwctl users``."""

    name: str
    uid: int
    gitlab_user_id: int
    gitlab_username: str
    role: Role
    locked: bool


def parse_users(output: str) -> list[WorkspaceUser]:
    """Parse ``rwctl users``, skipping lines that are not six tab-separated fields."""
    users = []
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) != 6 or fields[4] not in ("read", "write"):
            continue
        name, uid, gitlab_id, username, role, state = fields
        if not (uid.isdigit() and gitlab_id.isdigit()):
            continue
        users.append(
            WorkspaceUser(
                name, int(uid), int(gitlab_id), username, Role(role), state == "locked"
            )
        )

    return users
