"""GitLab users to Linux accounts, and the tool's argv (``bot.accounts``).

Cases: names used as they are; the alternative form for dots, capitals of reserved
names, leading digits, long and hostile usernames; properties of the mapping over
any username (valid, deterministic, at most 32, never reserved, different GitLab
ids never share a name); the fallback name; uids; roles from access levels;
commit emails (commit, public, no-reply, invalid skipped); key filtering; the argv
of every verb (``--uid auto`` too); parsing ``rwctl users``; joining asks the tool
for the uid policy the runtime names (against the GitLab double and a recording
runtime).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bot import accounts, provision
from bot.accounts import Role
from bot.gitlab import Client
from bot.lifecycle import Desired, Phase
from bot.runtime import base
from bot.settings import Settings
from bot.store import Store, Workspace
from tests.gitlab_double import DEVELOPER, GitLabDouble

VALID = re.compile(r"[a-z_][a-z0-9_-]{0,31}")

# GitLab's username rule: letters, digits, "_", "-", ".", starting and ending with
# a letter or digit, up to 255 characters.
gitlab_usernames = st.from_regex(
    r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,253}[A-Za-z0-9])?", fullmatch=True
)
any_usernames = st.one_of(gitlab_usernames, st.text(max_size=300))
user_ids = st.integers(1, 2**31 - 1 - accounts.UID_BASE)


def assert_safe(name: str) -> None:
    assert VALID.fullmatch(name), name
    assert not accounts.is_reserved(name)
    assert accounts.is_valid_name(name)


@pytest.mark.parametrize("username", ["alice", "bob-smith", "x", "dev_42", "a1"])
def test_good_linux_names_are_used_as_they_are(username: str) -> None:
    assert accounts.linux_name(username, 7) == username


def test_capitals_are_lowered() -> None:
    assert accounts.linux_name("Alice", 7) == "alice"


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        ("john.doe", "_john_doe-7"),
        ("root", "_root-7"),
        ("Root", "_root-7"),
        ("nobody", "_nobody-7"),
        ("rwbot", "_rwbot-7"),
        ("systemd-network", "_systemd-network-7"),
        ("42answers", "_42answers-7"),
        ("-rf", "_-rf-7"),
        ("--uid=0", "_--uid_0-7"),
        ("$(touch /tmp/x)", "___touch__tmp_x_-7"),
        ("../..", "______-7"),
        ("émile", "__mile-7"),
        ("", "_gl-7"),
    ],
)
def test_other_usernames_get_the_alternative_with_the_id(
    username: str, expected: str
) -> None:
    assert accounts.linux_name(username, 7) == expected


def test_long_usernames_are_cut_and_keep_the_whole_id() -> None:
    name = accounts.linux_name("a" * 255, 2_000_000_000 - accounts.UID_BASE)

    assert len(name) == 32
    assert name.endswith(f"-{2_000_000_000 - accounts.UID_BASE}")
    assert_safe(name)


def test_kelvin_sign_does_not_pass_for_an_ascii_k() -> None:
    assert accounts.linux_name("\u212aate", 7) != "kate"


@given(username=any_usernames, user_id=user_ids)
def test_every_username_maps_to_a_safe_name(username: str, user_id: int) -> None:
    name = accounts.linux_name(username, user_id)

    assert_safe(name)
    assert len(name) <= 32
    assert accounts.linux_name(username, user_id) == name


@given(
    first=any_usernames,
    second=any_usernames,
    first_id=user_ids,
    second_id=user_ids,
)
def test_different_gitlab_users_never_share_a_name(
    first: str, second: str, first_id: int, second_id: int
) -> None:
    # GitLab usernames are unique regardless of case, and ids are unique.
    assume(first_id != second_id and first.lower() != second.lower())

    assert accounts.linux_name(first, first_id) != accounts.linux_name(
        second, second_id
    )


@given(username=any_usernames, user_id=user_ids, other_id=user_ids)
def test_fallback_names_are_safe_and_never_a_primary_name(
    username: str, user_id: int, other_id: int
) -> None:
    fallback = accounts.fallback_name(user_id)

    assert_safe(fallback)
    assert fallback != accounts.linux_name(username, other_id)


def test_uid_is_the_base_plus_the_gitlab_id() -> None:
    assert accounts.uid_for(7) == 100007


@pytest.mark.parametrize("user_id", [0, -1, 2**31])
def test_uid_for_rejects_ids_out_of_range(user_id: int) -> None:
    with pytest.raises(ValueError):
        accounts.uid_for(user_id)


@pytest.mark.parametrize(
    ("level", "role"),
    [(10, None), (20, Role.READ), (30, Role.WRITE), (40, Role.WRITE), (50, Role.WRITE)],
)
def test_role_follows_the_gitlab_access_level(level: int, role: Role | None) -> None:
    settings = Settings(
        gitlab_url="http://gl",
        gitlab_token="t",
        webhook_secret="s",
        public_url="http://bot",
    )
    assert provision.role_for(level, settings) is role


def test_the_role_mapping_is_configurable() -> None:
    settings = Settings(
        gitlab_url="http://gl",
        gitlab_token="t",
        webhook_secret="s",
        public_url="http://bot",
        read_level=30,
        write_level=40,
    )
    assert provision.role_for(20, settings) is None
    assert provision.role_for(30, settings) is Role.READ
    assert provision.role_for(40, settings) is Role.WRITE


def test_no_reply_email_has_gitlabs_format() -> None:
    email = accounts.no_reply_email("alice", 7, "GitLab.example.com")

    assert email == "7-alice@users.noreply.gitlab.example.com"


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"commit_email": "c@x.org", "public_email": "p@x.org"}, "c@x.org"),
        ({"commit_email": "", "public_email": "p@x.org"}, "p@x.org"),
        ({"commit_email": None, "public_email": ""}, "7-alice@users.noreply.gl.test"),
        ({"commit_email": "a b@x.org"}, "7-alice@users.noreply.gl.test"),
        ({"public_email": "x@$(id).org"}, "7-alice@users.noreply.gl.test"),
    ],
)
def test_git_email_prefers_commit_then_public_then_no_reply(
    info: dict[str, object], expected: str
) -> None:
    assert (
        accounts.git_email({"id": 7, "username": "alice", **info}, "gl.test")
        == expected
    )


def test_git_name_drops_control_characters_and_falls_back_to_username() -> None:
    assert accounts.git_name({"name": "Eve\n\x1b[31m", "username": "eve"}) == "Eve [31m"
    assert accounts.git_name({"name": "", "username": "eve"}) == "eve"
    assert len(accounts.git_name({"name": "é" * 300, "username": "e"})) == 255


def test_usable_keys_keeps_only_plain_key_lines() -> None:
    good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq0 me@host"
    keys = [
        good,
        "  " + good + "\n",
        'command="sh" ' + good,
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
        "ssh-ed25519 AAAA\nssh-rsa AAAAB3NzaC1yc2EAAAADAQAB",
        "ssh-ed25519",
    ]

    assert accounts.usable_keys(keys) == [good, good]


def test_adduser_argv_carries_every_value_as_its_own_argument() -> None:
    argv = accounts.adduser_argv(
        name="alice",
        gitlab_user_id=7,
        gitlab_username="Alice",
        role=Role.WRITE,
        git_name="Alice $(id)",
        git_email="a@x.org",
        keys=["ssh-ed25519 AAAA k1", "ssh-rsa BBBB k2"],
    )

    assert argv == [
        "/opt/rwbot/rwctl",
        "adduser",
        "--uid", "100007",
        "--name", "alice",
        "--gitlab-id", "7",
        "--gitlab-username", "Alice",
        "--role", "write",
        "--git-name", "Alice $(id)",
        "--git-email", "a@x.org",
        "--group", "rwbot-write",
        "--key", "ssh-ed25519 AAAA k1",
        "--key", "ssh-rsa BBBB k2",
    ]  # fmt: skip


def test_adduser_argv_leaves_the_uid_to_the_tool_when_auto() -> None:
    argv = accounts.adduser_argv(
        name="alice",
        gitlab_user_id=7,
        gitlab_username="alice",
        role=Role.READ,
        git_name="Alice",
        git_email="a@x.org",
        uid="auto",
    )

    assert argv[2:4] == ["--uid", "auto"]


class RecordingRuntime(base.Runtime):
    """Answers every exec with success and remembers the argv; nothing else."""

    def __init__(self, uid_policy: accounts.UidPolicy) -> None:
        self._uid_policy = uid_policy
        self.execs: list[list[str]] = []

    @property
    def uid_policy(self) -> accounts.UidPolicy:
        return self._uid_policy

    def exec(
        self, key: base.WorkspaceKey, argv: Sequence[str], *, user: str = "root"
    ) -> base.ExecResult:
        self.execs.append(list(argv))
        return base.ExecResult(0, b"")

    def ensure_running(self, spec: base.Spec) -> base.Status:
        raise NotImplementedError

    def status(self, key: base.WorkspaceKey) -> base.Status:
        raise NotImplementedError

    def stop(self, key: base.WorkspaceKey) -> None:
        raise NotImplementedError

    def remove(self, key: base.WorkspaceKey) -> None:
        raise NotImplementedError

    def list_ours(self) -> Iterator[base.Listed]:
        raise NotImplementedError

    def open_terminal(
        self, key: base.WorkspaceKey, argv: Sequence[str], *, rows: int, cols: int
    ) -> base.Terminal:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("policy", "uid"), [("gitlab-id", None), ("auto", "auto")], ids=["id", "auto"]
)
def test_joining_asks_the_tool_for_the_uid_the_runtime_wants(
    tmp_path: Path, policy: accounts.UidPolicy, uid: str | None
) -> None:
    with GitLabDouble() as gitlab:
        project = gitlab.add_project("team/app")
        person = gitlab.add_user("rita")
        gitlab.set_member(project, person, DEVELOPER)
        settings = Settings(
            gitlab_url=gitlab.url,
            gitlab_token=gitlab.token,
            webhook_secret="s",
            public_url="http://bot",
        )
        store = Store(f"sqlite:///{tmp_path}/bot.db")
        store.migrate()
        with store.session() as session:
            session.add(
                Workspace(
                    project_id=project["id"],
                    mr_iid=1,
                    project_path="team/app",
                    project_http_url="",
                    mr_state="opened",
                    head_sha="a" * 40,
                    desired=Desired.RUNNING,
                    phase=Phase.READY,
                )
            )
        runtime = RecordingRuntime(policy)

        provision.join(
            settings,
            store,
            Client(settings),
            runtime,
            provision.Person(person["id"], "rita", "Rita", ""),
            base.WorkspaceKey(project["id"], 1),
        )
        store.dispose()

    (argv,) = runtime.execs
    assert argv[:2] == [accounts.TOOL_PATH, "adduser"]
    assert argv[argv.index("--uid") + 1] == (uid or str(accounts.uid_for(person["id"])))


def test_other_verbs_argv() -> None:
    assert accounts.init_argv("/workspace/p") == [
        "/opt/rwbot/rwctl", "init", "--checkout", "/workspace/p",
        "--group", "rwbot-write", "--gid", "4242",
    ]  # fmt: skip
    assert accounts.shell_argv("alice") == [
        "/opt/rwbot/rwctl",
        "shell",
        "--name",
        "alice",
    ]
    assert accounts.shell_argv("alice", "id")[-2:] == ["--command", "id"]
    assert accounts.lock_argv("alice") == [
        "/opt/rwbot/rwctl",
        "lock",
        "--name",
        "alice",
    ]
    assert accounts.users_argv() == ["/opt/rwbot/rwctl", "users"]


def test_name_refused_only_for_name_taken() -> None:
    assert accounts.name_refused(3, "rwctl: name-taken: alice exists with uid 1000\n")
    assert not accounts.name_refused(3, "rwctl: uid-taken: uid 100007 belongs to x\n")
    assert not accounts.name_refused(2, "rwctl: bad --name: must match\n")


def test_parse_users_reads_records_and_skips_garbage() -> None:
    output = (
        "alice\t100007\t7\tAlice\twrite\tactive\nbob\t100008\t8\tbob\tread\tlocked\nx\n"
    )

    assert accounts.parse_users(output) == [
        accounts.WorkspaceUser("alice", 100007, 7, "Alice", Role.WRITE, locked=False),
        accounts.WorkspaceUser("bob", 100008, 8, "bob", Role.READ, locked=True),
    ]


def test_the_tool_reserves_the_same_names() -> None:
    script = (Path(__file__).parent.parent / "bot/workspace/rwctl.sh").read_text()
    listed = script.split("RESERVED_NAMES='", 1)[1].split("'", 1)[0].split()

    assert frozenset(listed) == accounts.RESERVED_NAMES
    assert "rwbot* | systemd-*) return 0" in script
