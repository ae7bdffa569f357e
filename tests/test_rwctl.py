"""The in-workspace tool (``bot/workspace/rwctl.sh``) run for real under Podman.

Every case runs in two root filesystems: the Debian workspace image (shadow tools,
util-linux setpriv) and a busybox-only image built here from Debian's static
busybox (no adduser applet, no setpriv --reuid: the tool edits the account files
itself and drops privileges with su). Containers get the bot's hardening.

Cases: init (checkout modes, idempotence, gid conflicts); adduser (uid, 0700 home,
gitconfig, authorized_keys, idempotence, key replacement, concurrent calls, role
changes both ways, unlocking); ``--uid auto`` (the lowest uid from 10000 that no
record, account or group has; the same one again for the same person, also after the
account files were reset; distinct under concurrent calls); checkout permissions for
read and write users; homes private to their owner; shell as the user with no way
back to root, in the container's environment (quoting kept) under the account's own
HOME, USER and LOGNAME; lock (kills processes, refuses shell; needs CAP_KILL; ends a
shell recorded for the user that has not dropped root yet, and no other); the tool's
own lock (taken over from a holder that is gone, also when its pid lives on in
another process; waited for while it lives); refusing to take over reserved names,
image accounts and uids of other GitLab users; bad input of every kind exits 2 and
changes nothing (hypothesis); shell metacharacters in values never run.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import accounts
from tests import services

pytestmark = pytest.mark.podman

TOOL = Path(__file__).resolve().parent.parent / "bot" / "workspace" / "rwctl.sh"
DEBIAN_IMAGE = services.WORKSPACE_IMAGE
BUSYBOX_IMAGE = "localhost/rwbot-busybox:test"
IMAGES = [
    pytest.param(DEBIAN_IMAGE, id="debian"),
    pytest.param(BUSYBOX_IMAGE, id="busybox"),
]
CHECKOUT = "/workspace/project"
HARDENING_CAPS = ["SETUID", "SETGID", "CHOWN", "FOWNER", "DAC_OVERRIDE", "KILL"]
ACCOUNT_FILES = "/etc/passwd /etc/group /etc/shadow /etc/gshadow /var/lib/rwbot/users"
KEY_A = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq0mYcz3Vj3Qq4kXxkq7i0aT9HbPFtIbDb0t0R1b2c3"
    " alice@laptop"
)
KEY_B = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx1cYq0mYcz3Vj3Qq4kXxkq7i0aT9HbPFtIbDb0t0R9"
    " alice@phone"
)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


class Workspace:
    """A running container with the tool installed, and ways to run things in it."""

    def __init__(self, container: Container) -> None:
        self.container = container

    def exec(
        self, argv: list[str], environment: dict[str, str] | None = None
    ) -> Result:
        code, (out, err) = self.container.exec_run(
            argv, user="root", demux=True, environment=environment
        )
        return Result(code, (out or b"").decode(), (err or b"").decode())

    def rwctl(self, *args: str) -> Result:
        return self.exec([accounts.TOOL_PATH, *args])

    def root_sh(self, script: str) -> Result:
        """Run one of the test's own fixed scripts as root."""
        return self.exec(["/bin/sh", "-c", script])

    def as_user(self, name: str, command: str) -> Result:
        return self.exec(accounts.shell_argv(name, command))

    def adduser(
        self,
        name: str,
        gitlab_id: int,
        *extra: str,
        role: str = "write",
        options: dict[str, str] | None = None,
    ) -> Result:
        """adduser with valid values, ``options`` replacing some, ``extra`` appended."""
        everything = {
            "--uid": str(accounts.uid_for(gitlab_id)),
            "--name": name,
            "--gitlab-id": str(gitlab_id),
            "--gitlab-username": name,
            "--role": role,
            "--git-name": name.capitalize() + " Example",
            "--git-email": f"{name}@example.com",
            "--group": accounts.SHARED_GROUP,
            **(options or {}),
        }
        args = [part for option in everything.items() for part in option]
        return self.rwctl("adduser", *args, *extra)

    def snapshot(self) -> str:
        return self.root_sh(
            f"cat {ACCOUNT_FILES} 2>/dev/null; stat -c '%n %a %u %g' /home/*"
        ).out


def _busybox_rootfs_tar() -> bytes:
    """A root filesystem with nothing but busybox and a minimal /etc."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(
            name: str, mode: int, data: bytes | None = None, link: str = ""
        ) -> None:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is not None:
                info.size = len(data)
            elif link:
                info.type, info.linkname = tarfile.SYMTYPE, link
            else:
                info.type = tarfile.DIRTYPE
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        for directory in ("bin", "etc", "home", "proc", "sys", "dev", "var", "opt"):
            add(directory, 0o755)
        add("root", 0o700)
        add("tmp", 0o1777)
        add("bin/busybox", 0o755, Path(busybox).read_bytes())
        for applet in applets:
            if applet != "busybox":
                add(f"bin/{applet}", 0o777, link="busybox")
        add(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n"
            b"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
            b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        add("etc/group", 0o644, b"root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def client(docker_host: str) -> docker.DockerClient:
    if (
        shutil.which("catatonit") is None
        and not Path("/usr/libexec/podman/catatonit").exists()
    ):
        services.missing("catatonit (podman's --init, used by the bot's hardening)")
    return docker.DockerClient(base_url=docker_host)


@pytest.fixture(scope="session")
def busybox_image(client: docker.DockerClient) -> str:
    try:
        client.images.get(BUSYBOX_IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run(
            ["podman", "import", "-q", "-", BUSYBOX_IMAGE],
            input=_busybox_rootfs_tar(),
            env=services.podman_env(),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return BUSYBOX_IMAGE


def _tool_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("opt", "opt/rwbot"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        data = TOOL.read_bytes()
        info = tarfile.TarInfo(accounts.TOOL_PATH.lstrip("/"))
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _start_workspace(
    client: docker.DockerClient,
    image: str,
    caps: list[str] = HARDENING_CAPS,
    environment: dict[str, str] | None = None,
) -> Workspace:
    container = client.containers.run(
        image,
        ["sleep", "infinity"],
        environment=environment,
        detach=True,
        cap_drop=["ALL"],
        cap_add=caps,
        security_opt=["no-new-privileges"],
        network_mode="none",
        init=True,
    )
    container.put_archive("/", _tool_archive())
    workspace = Workspace(container)
    # A checkout as a root clone leaves it: root-owned, not group-writable.
    created = workspace.root_sh(
        f"mkdir -p {CHECKOUT}/src && echo hello > {CHECKOUT}/README"
        f" && echo 'print(1)' > {CHECKOUT}/src/main.py"
        f" && chmod 600 {CHECKOUT}/src/main.py"
    )
    assert created.code == 0, created.err
    initialised = workspace.rwctl(*accounts.init_argv(CHECKOUT)[1:])
    assert initialised.code == 0, initialised.err
    return workspace


def _stop(workspace: Workspace) -> None:
    workspace.container.remove(force=True)


@pytest.fixture(params=IMAGES)
def image(request: pytest.FixtureRequest, busybox_image: str) -> str:
    return str(request.param)


@pytest.fixture
def ws(client: docker.DockerClient, image: str) -> Iterator[Workspace]:
    workspace = _start_workspace(client, image)
    yield workspace
    _stop(workspace)


def _mode(ws: Workspace, path: str) -> str:
    result = ws.root_sh(f"stat -c '%a %U %G' {path}")
    assert result.code == 0, result.err
    return result.out.strip()


# --- init and adduser -------------------------------------------------------------


def test_init_makes_checkout_group_writable_and_readable_by_all(ws: Workspace) -> None:
    assert _mode(ws, CHECKOUT) == "2775 root rwbot-write"
    assert _mode(ws, f"{CHECKOUT}/src") == "2775 root rwbot-write"
    assert _mode(ws, f"{CHECKOUT}/src/main.py") == "664 root rwbot-write"
    assert _mode(ws, "/var/lib/rwbot") == "700 root root"
    assert "umask 002" in ws.root_sh("cat /etc/profile.d/rwbot.sh").out

    again = ws.rwctl(*accounts.init_argv(CHECKOUT)[1:])

    assert again.code == 0, again.err
    assert ws.root_sh("grep -c '^rwbot-write:' /etc/group").out.strip() == "1"


def test_init_refuses_a_gid_another_group_has(ws: Workspace) -> None:
    result = ws.rwctl(
        "init", "--checkout", CHECKOUT, "--group", "other", "--gid", "4242"
    )

    assert result.code == 3
    assert "gid-taken" in result.err


def test_adduser_creates_user_with_uid_private_home_gitconfig_and_keys(
    ws: Workspace,
) -> None:
    result = ws.adduser("alice", 7, "--key", KEY_A)

    assert result.code == 0, result.err
    assert result.out == "alice\n"
    assert ws.root_sh("id -u alice").out.strip() == "100007"
    assert _mode(ws, "/home/alice") == "700 alice alice"
    assert _mode(ws, "/home/alice/.ssh") == "700 alice alice"
    assert _mode(ws, "/home/alice/.ssh/authorized_keys") == "600 alice alice"
    assert ws.root_sh("cat /home/alice/.ssh/authorized_keys").out == KEY_A + "\n"
    gitconfig = ws.root_sh("cat /home/alice/.gitconfig").out
    assert '\tname = "Alice Example"' in gitconfig
    assert '\temail = "alice@example.com"' in gitconfig
    assert f'\tdirectory = "{CHECKOUT}"' in gitconfig
    record = "alice\t100007\t7\talice\twrite\tactive\n"
    assert ws.rwctl("users").out == record


def test_adduser_twice_changes_nothing_but_replaces_keys(ws: Workspace) -> None:
    assert ws.adduser("alice", 7, "--key", KEY_A).code == 0
    before = ws.snapshot()

    again = ws.adduser("alice", 7, "--key", KEY_B)

    assert again.code == 0, again.err
    assert ws.snapshot() == before
    assert ws.root_sh("cat /home/alice/.ssh/authorized_keys").out == KEY_B + "\n"
    assert ws.adduser("alice", 7).code == 0
    assert ws.root_sh("cat /home/alice/.ssh/authorized_keys").out == ""


def test_concurrent_adduser_calls_all_succeed(ws: Workspace) -> None:
    names = ["ann", "ben", "cat", "dan"]
    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(lambda n: ws.adduser(n, 10 + names.index(n)), names))

    assert [r.code for r in results] == [0] * len(names), [r.err for r in results]
    passwd = ws.root_sh("cat /etc/passwd").out
    assert all(f"{n}:" in passwd for n in names)
    assert len(accounts.parse_users(ws.rwctl("users").out)) == len(names)


def test_role_change_moves_group_membership_both_ways(ws: Workspace) -> None:
    def groups() -> str:
        return ws.root_sh("id -nG alice").out

    assert ws.adduser("alice", 7, role="read").code == 0
    assert "rwbot-write" not in groups()

    assert ws.adduser("alice", 7, role="write").code == 0
    assert "rwbot-write" in groups()

    assert ws.adduser("alice", 7, role="read").code == 0
    assert "rwbot-write" not in groups()
    assert "\tread\tactive" in ws.rwctl("users").out


def test_read_user_reads_but_cannot_write_the_checkout(ws: Workspace) -> None:
    assert ws.adduser("rita", 8, role="read").code == 0

    assert ws.as_user("rita", "cat src/main.py").out == "print(1)\n"
    assert ws.as_user("rita", "echo x >> README").code != 0
    assert ws.as_user("rita", "touch new-file").code != 0


def test_write_user_creates_group_writable_files(ws: Workspace) -> None:
    assert ws.adduser("wes", 9).code == 0

    result = ws.as_user("wes", "umask; echo 2 >> README && mkdir d && touch d/f")

    assert result.code == 0, result.err
    assert result.out.strip() == "0002"
    assert _mode(ws, f"{CHECKOUT}/d") == "2775 wes rwbot-write"
    assert _mode(ws, f"{CHECKOUT}/d/f") == "664 wes rwbot-write"


def test_user_cannot_read_another_users_home(ws: Workspace) -> None:
    assert ws.adduser("alice", 7).code == 0
    assert ws.adduser("bob", 8).code == 0

    assert ws.as_user("bob", "ls /home/alice").code != 0
    assert ws.as_user("bob", "cat /home/alice/.gitconfig").code != 0


# --- --uid auto (user namespaces) ------------------------------------------------


def _uid(ws: Workspace, name: str) -> int:
    result = ws.root_sh(f"id -u {name}")
    assert result.code == 0, result.err
    return int(result.out)


def test_uid_auto_takes_the_lowest_uid_no_account_group_or_record_has(
    ws: Workspace,
) -> None:
    taken = ws.root_sh(
        "echo 'carol:x:10000:10000::/home/carol:/bin/sh' >> /etc/passwd"
        " && echo 'builders:x:10001:' >> /etc/group"
    )
    assert taken.code == 0, taken.err
    auto = {"--uid": "auto"}

    results = [ws.adduser(n, i, options=auto) for n, i in (("ann", 7), ("ben", 8))]
    assert ws.rwctl("lock", "--name", "ann").code == 0  # a locked record keeps it
    results.append(ws.adduser("cat", 9, options=auto))

    assert [r.code for r in results] == [0, 0, 0], [r.err for r in results]
    assert [_uid(ws, n) for n in ("ann", "ben", "cat")] == [10002, 10003, 10004]
    assert _mode(ws, "/home/ben") == "700 ben ben"
    users = {u.name: u.uid for u in accounts.parse_users(ws.rwctl("users").out)}
    assert users == {"ann": 10002, "ben": 10003, "cat": 10004}


def test_uid_auto_gives_the_same_person_the_same_uid_on_every_join(
    ws: Workspace,
) -> None:
    auto = {"--uid": "auto"}
    assert ws.adduser("alice", 7, options=auto).code == 0
    before = ws.snapshot()

    again = ws.adduser("alice", 7, options=auto)

    assert again.code == 0, again.err
    assert ws.snapshot() == before
    assert ws.adduser("bob", 8, options=auto).code == 0
    # On Kubernetes the root filesystem is new on every start while the records
    # (/var/lib/rwbot) persist: the account comes back with the same uid.
    reset = ws.root_sh(
        "for f in /etc/passwd /etc/group /etc/shadow /etc/gshadow; do"
        " [ -f $f ] && grep -v '^alice:' $f > $f.new && cat $f.new > $f"
        " && rm $f.new; done; true"
    )
    assert reset.code == 0, reset.err
    assert ws.root_sh("id -u alice").code != 0

    back = ws.adduser("alice", 7, options=auto)

    assert back.code == 0, back.err
    assert (_uid(ws, "alice"), _uid(ws, "bob")) == (10000, 10001)
    assert ws.as_user("alice", "id -u").out == "10000\n"


def test_uid_auto_never_takes_a_uid_another_person_has(ws: Workspace) -> None:
    assert ws.adduser("alice", 7, options={"--uid": "auto"}).code == 0
    before = ws.snapshot()

    same_uid = ws.adduser("mallory", 8, options={"--uid": "10000"})
    same_name = ws.adduser("alice", 8, options={"--uid": "auto"})

    assert (same_uid.code, same_name.code) == (3, 3)
    assert "uid-taken" in same_uid.err
    assert "name-taken" in same_name.err
    assert ws.snapshot() == before


def test_concurrent_uid_auto_calls_get_distinct_uids(ws: Workspace) -> None:
    names = ["ann", "ben", "cat", "dan"]
    with ThreadPoolExecutor(len(names)) as pool:
        results = list(
            pool.map(
                lambda n: ws.adduser(n, 10 + names.index(n), options={"--uid": "auto"}),
                names,
            )
        )

    assert [r.code for r in results] == [0] * len(names), [r.err for r in results]
    assert sorted(_uid(ws, n) for n in names) == [10000, 10001, 10002, 10003]


# --- shell --------------------------------------------------------------------------


def test_shell_runs_as_the_user_with_no_way_back_to_root(ws: Workspace) -> None:
    assert ws.adduser("alice", 7).code == 0

    result = ws.exec(
        accounts.shell_argv(
            "alice",
            "whoami; id -u; pwd; echo $HOME $USER $LOGNAME $TERM;"
            " grep -E '^(NoNewPrivs|CapEff|CapPrm|CapInh|CapAmb):' /proc/self/status",
        ),
        environment={"TERM": "xterm-256color"},
    )

    assert result.code == 0, result.err
    lines = result.out.split("\n")
    assert lines[:4] == [
        "alice",
        "100007",
        CHECKOUT,
        "/home/alice alice alice xterm-256color",
    ]
    status = dict(line.split(":\t") for line in lines[4:] if line)
    assert status["NoNewPrivs"] == "1"
    assert {status[c] for c in ("CapEff", "CapPrm", "CapInh", "CapAmb")} == {
        "0000000000000000"
    }
    assert ws.as_user("alice", "su -c id root </dev/null").code != 0


def test_shell_refuses_users_it_did_not_create(ws: Workspace) -> None:
    for name in ("root", "daemon", "nobody", "ghost"):
        result = ws.as_user(name, "id")

        assert result.code == 3, name
        assert "not a workspace user" in result.err


def test_shells_get_the_containers_environment_under_their_own_account(
    client: docker.DockerClient, image: str
) -> None:
    devfile_env = {
        "GREETING": "hello from the devfile",
        "TRICKY": 'it\'s "quoted" $HOME `id` \\ and\nsecond line',
        "HOME": "/root",  # the container's, not the reviewer's
        "USER": "root",
    }
    ws = _start_workspace(client, image, environment=devfile_env)
    try:
        assert ws.adduser("alice", 7).code == 0
        seen = ws.as_user(
            "alice",
            'printf "%s|" "$GREETING" "$TRICKY" "$HOME" "$USER" "$LOGNAME"; id -u',
        )
        assert seen.code == 0, seen.err
        assert seen.out == (
            f"hello from the devfile|{devfile_env['TRICKY']}|/home/alice|alice|alice|"
            "100007\n"
        )
        assert _mode(ws, "/etc/rwbot/environment") == "644 root root"
    finally:
        _stop(ws)


# --- run: postStart commands -------------------------------------------------------

LOG = "/var/log/rwbot-poststart.log"


def _run(ws: Workspace, command: str, directory: str = CHECKOUT) -> Result:
    return ws.rwctl(*accounts.run_argv(command, directory, LOG)[1:])


def test_run_is_the_devfile_account_writing_the_checkout_never_root(
    ws: Workspace,
) -> None:
    ran = _run(ws, 'id -un; id -u; pwd; echo made > made.txt; echo "$HOME" >&2')

    assert ran.code == 0, ran.err
    assert ran.out == ran.err == ""  # all of it went to the log
    uid = ws.root_sh("id -u rwbot-devfile").out.strip()
    assert 9000 <= int(uid) < 10000  # below every reviewer's
    assert ws.root_sh(f"cat {LOG}").out == (
        '== id -un; id -u; pwd; echo made > made.txt; echo "$HOME" >&2\n'
        f"rwbot-devfile\n{uid}\n{CHECKOUT}\n/home/rwbot-devfile\n"
    )
    assert _mode(ws, f"{CHECKOUT}/made.txt") == "664 rwbot-devfile rwbot-write"
    assert _mode(ws, LOG) == "644 root root"
    assert _run(ws, "touch /etc/owned").code == 1
    assert _run(ws, "exit 7").code == 7
    assert ws.root_sh("test -e /etc/owned").code == 1
    assert "rwbot-devfile" not in ws.rwctl("users").out  # no reviewer


def test_run_keeps_its_uid_when_the_account_files_are_reset(ws: Workspace) -> None:
    assert _run(ws, "true").code == 0
    uid = ws.root_sh("id -u rwbot-devfile").out.strip()
    # A new pod: the image's account files again, the state directory kept.
    reset = ws.root_sh(
        "sed -i '/^rwbot-devfile:/d' /etc/passwd /etc/group"
        " && sed -i 's/,rwbot-devfile//; s/:rwbot-devfile$/:/' /etc/group"
    )
    assert reset.code == 0, reset.err

    assert _run(ws, "true").code == 0
    assert ws.root_sh("id -u rwbot-devfile").out.strip() == uid


def test_run_refuses_what_it_cannot_do_safely(ws: Workspace) -> None:
    assert _run(ws, "true", directory="relative/dir").code == 2
    assert _run(ws, "true", directory="/etc").code == 2
    assert ws.root_sh(f"test -e {LOG}").code == 1  # nothing ran, nothing logged
    assert ws.root_sh(f"mkdir -p /var/log && ln -s /etc/shadow {LOG}").code == 0
    refused = _run(ws, "true")
    assert refused.code == 3 and "symbolic link" in refused.err


def test_run_never_takes_over_an_image_account_of_its_name(ws: Workspace) -> None:
    account = "rwbot-devfile:x:4000:4000::/nonexistent:/bin/false"
    assert ws.root_sh(f"echo '{account}' >>/etc/passwd").code == 0

    refused = _run(ws, "id")

    assert refused.code == 3 and "name-taken" in refused.err


# --- lock ---------------------------------------------------------------------------


def _user_pids(ws: Workspace, uid: int) -> list[str]:
    found = ws.root_sh(
        "for f in /proc/[0-9]*/status; do"
        f' awk -v u={uid} \'/^State:/ && $2 == "Z" {{ z = 1 }}'
        " /^Uid:/ && $2 == u { m = 1 } END { exit !(m && !z) }' $f 2>/dev/null"
        " && { d=${f#/proc/}; echo ${d%/status}; }; done"
    )
    return found.out.split()


def _start_background_sleep(ws: Workspace, name: str, uid: int) -> None:
    ws.container.exec_run(accounts.shell_argv(name, "exec sleep 1000"), detach=True)
    services.wait_for(lambda: _user_pids(ws, uid), timeout=10, what="user's sleep")


def test_lock_kills_running_processes_and_refuses_shell(ws: Workspace) -> None:
    assert ws.adduser("alice", 7).code == 0
    _start_background_sleep(ws, "alice", 100007)

    locked = ws.rwctl("lock", "--name", "alice")

    assert locked.code == 0, locked.err
    assert _user_pids(ws, 100007) == []
    refused = ws.as_user("alice", "id")
    assert refused.code == 3
    assert "locked" in refused.err
    assert "rwbot-write" not in ws.root_sh("id -nG alice").out
    assert "\tlocked\n" in ws.rwctl("users").out
    assert ws.rwctl("lock", "--name", "alice").code == 0


def test_adduser_unlocks_a_locked_user(ws: Workspace) -> None:
    assert ws.adduser("alice", 7).code == 0
    assert ws.rwctl("lock", "--name", "alice").code == 0

    assert ws.adduser("alice", 7).code == 0

    assert ws.as_user("alice", "whoami").out == "alice\n"
    assert "rwbot-write" in ws.root_sh("id -nG alice").out


def test_lock_cannot_kill_without_cap_kill(
    client: docker.DockerClient, image: str
) -> None:
    ws = _start_workspace(client, image, [c for c in HARDENING_CAPS if c != "KILL"])
    try:
        assert ws.adduser("alice", 7).code == 0
        _start_background_sleep(ws, "alice", 100007)

        locked = ws.rwctl("lock", "--name", "alice")

        assert locked.code == 1
        assert "kill-failed" in locked.err
        assert _user_pids(ws, 100007) != []
    finally:
        _stop(ws)


def _root_sleep(ws: Workspace) -> tuple[str, str]:
    """A root process standing in for a shell that has not dropped privileges
    yet: its pid and start time."""
    ws.container.exec_run(
        ["/bin/sh", "-c", "echo $$ >/tmp/sleeper; exec sleep 1000"], detach=True
    )
    pid = str(
        services.wait_for(
            lambda: ws.root_sh("cat /tmp/sleeper").out.strip(),
            timeout=10,
            what="the sleeper's pid",
        )
    )
    stat = ws.root_sh(f"cat /proc/{pid}/stat").out
    return pid, stat.rsplit(")", 1)[1].split()[19]


def _alive(ws: Workspace, pid: str) -> bool:
    state = ws.root_sh(f"awk '/^State:/ {{ print $2 }}' /proc/{pid}/status").out
    return state.strip() not in ("", "Z")


def test_every_shell_is_recorded_with_its_user_before_it_drops_privileges(
    ws: Workspace,
) -> None:
    assert ws.adduser("alice", 7).code == 0
    _start_background_sleep(ws, "alice", 100007)
    (pid,) = _user_pids(ws, 100007)  # exec sleep: the shell's own pid

    record = ws.root_sh(f"cat /var/lib/rwbot/shells/{pid}").out
    start = ws.root_sh(f"cat /proc/{pid}/stat").out.rsplit(")", 1)[1].split()[19]
    assert record == f"{start} alice\n"


def test_lock_ends_a_shell_of_the_user_that_still_runs_as_root(ws: Workspace) -> None:
    assert ws.adduser("alice", 7).code == 0
    assert ws.adduser("bob", 8).code == 0
    alices, start = _root_sleep(ws)
    planted = ws.root_sh(
        "mkdir -p /var/lib/rwbot/shells && cd /var/lib/rwbot/shells &&"
        f" echo '{start} alice' >{alices} && echo '{start} bob' >1"  # 1: reused
    )
    assert planted.code == 0, planted.err

    locked = ws.rwctl("lock", "--name", "alice")

    assert locked.code == 0, locked.err
    services.wait_for(
        lambda: not _alive(ws, alices), timeout=10, what="the shell to end"
    )
    assert _alive(ws, "1")  # bob's record: not alice's, and not that process
    assert ws.rwctl("lock", "--name", "bob").code == 0
    assert _alive(ws, "1")
    assert ws.root_sh("ls /var/lib/rwbot/shells").out == ""


@pytest.mark.parametrize("holder", ["1 0", "999999 1"], ids=["pid-reused", "gone"])
def test_a_lock_whose_holder_is_gone_is_taken_over(ws: Workspace, holder: str) -> None:
    ws.root_sh(f"ln -s '{holder}' /var/lib/rwbot/lock-holder")

    result = ws.adduser("alice", 7)

    assert result.code == 0, result.err
    assert ws.root_sh("ls /var/lib/rwbot").out.split().count("lock-holder") == 0


def test_a_lock_whose_holder_lives_is_waited_for(ws: Workspace) -> None:
    pid, start = _root_sleep(ws)
    ws.root_sh(f"ln -s '{pid} {start}' /var/lib/rwbot/lock-holder")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(ws.adduser, "alice", 7)
        services.wait_for(
            lambda: "adduser" in ws.root_sh("ps -o args 2>/dev/null || ps").out,
            timeout=10,
            what="adduser to be waiting",
        )
        assert "alice:" not in ws.root_sh("cat /etc/passwd").out
        ws.root_sh(f"kill {pid}")
        result = pending.result(timeout=60)

    assert result.code == 0, result.err
    assert "alice:" in ws.root_sh("cat /etc/passwd").out


# --- refusing to take over accounts -------------------------------------------------


@pytest.mark.parametrize("name", ["root", "daemon", "nobody", "rwbot-admin", "_apt"])
def test_adduser_refuses_reserved_names(ws: Workspace, name: str) -> None:
    before = ws.snapshot()

    result = ws.adduser(name, 7)

    assert result.code == 3
    assert "name-taken" in result.err
    assert ws.snapshot() == before


def test_adduser_refuses_an_account_of_the_image(ws: Workspace) -> None:
    created = ws.root_sh(
        "echo 'carol:x:100009:100009::/home/carol:/bin/sh' >> /etc/passwd"
        " && echo 'carol:x:100009:' >> /etc/group"
    )
    assert created.code == 0
    before = ws.snapshot()

    same_uid = ws.adduser("carol", 9)
    other_name = ws.adduser("dave", 9)

    assert (same_uid.code, other_name.code) == (3, 3)
    assert "name-taken" in same_uid.err
    assert "uid-taken" in other_name.err
    assert ws.snapshot() == before


def test_uid_and_name_are_never_given_to_another_gitlab_user(ws: Workspace) -> None:
    assert ws.adduser("alice", 7).code == 0
    before = ws.snapshot()

    same_name = ws.adduser("alice", 8)
    same_uid = ws.adduser("mallory", 8, options={"--uid": "100007"})

    assert (same_name.code, same_uid.code) == (3, 3)
    assert "name-taken" in same_name.err
    assert "uid-taken" in same_uid.err
    assert ws.snapshot() == before


# --- hostile input -------------------------------------------------------------------


def test_shell_metacharacters_in_values_never_run(ws: Workspace) -> None:
    git_name = 'Eve $(touch /tmp/pwned) `touch /tmp/pwned` "q" \\ ; # | & > x'
    key = f"{KEY_A.rsplit(' ', 1)[0]} $(touch /tmp/pwned);`touch /tmp/pwned`"

    result = ws.adduser("eve", 5, "--key", key, options={"--git-name": git_name})

    assert result.code == 0, result.err
    assert ws.root_sh("test -e /tmp/pwned").code == 1
    assert ws.root_sh("cat /home/eve/.ssh/authorized_keys").out == key + "\n"
    gitconfig = ws.root_sh("cat /home/eve/.gitconfig").out
    assert (
        '\tname = "Eve $(touch /tmp/pwned) `touch /tmp/pwned` \\"q\\" \\\\ ;'
        in gitconfig
    )
    if ws.root_sh("command -v git").code == 0:
        read_back = ws.as_user("eve", "git config --global user.name")
        assert read_back.out == git_name + "\n"


def _not(check) -> st.SearchStrategy[str]:  # type: ignore[no-untyped-def]
    chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
    interesting = st.sampled_from(
        ["", "-rf", "--uid=0", "$(id)", "../..", "a\nb", "a" * 300, "ROOT", "é", " "]
    )
    return st.one_of(interesting, st.text(chars, max_size=40)).filter(
        lambda s: not check(s)
    )


def _is_decimal_at_least(floor: int):  # type: ignore[no-untyped-def]
    return lambda s: (
        s.isascii() and s.isdigit() and s == str(int(s)) and int(s) >= floor
    )


BAD_VALUES: dict[str, st.SearchStrategy[str]] = {
    "--uid": st.one_of(
        st.integers(-5, 9999).map(str),
        st.sampled_from(["0", "00100001", "100001 ", "1e6", "99999999999", "0x186a1"]),
        _not(_is_decimal_at_least(10000)).filter(lambda s: s != "auto"),
    ),
    "--name": _not(accounts._LINUX_NAME.fullmatch),
    "--gitlab-id": _not(_is_decimal_at_least(1)),
    "--gitlab-username": _not(
        lambda s: __import__("re").fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}", s)
    ),
    "--role": _not(lambda s: s in ("read", "write")),
    "--git-name": st.one_of(
        st.just(""),
        st.just("x" * 256),
        st.tuples(st.text(max_size=5), st.sampled_from("\n\t\x1b\x7f\x85\r"))
        .map("".join)
        .filter(lambda s: "\x00" not in s),
    ),
    "--git-email": _not(accounts.is_valid_email),
    "--group": _not(accounts._LINUX_NAME.fullmatch),
    "--key": _not(lambda s: accounts.usable_keys([s]) == [s]),
}


@pytest.fixture(scope="module", params=IMAGES)
def shared_ws(
    request: pytest.FixtureRequest, client: docker.DockerClient
) -> Iterator[Workspace]:
    request.getfixturevalue("busybox_image")
    workspace = _start_workspace(client, str(request.param))
    assert workspace.adduser("alice", 7).code == 0
    yield workspace
    _stop(workspace)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(option=st.sampled_from(sorted(BAD_VALUES)), data=st.data())
def test_bad_input_exits_2_and_changes_nothing(
    shared_ws: Workspace, option: str, data: st.DataObject
) -> None:
    before = shared_ws.snapshot()
    value = data.draw(BAD_VALUES[option], label=option)

    result = shared_ws.adduser("bob", 8, options={option: value})

    assert result.code == 2, result.err
    assert result.err.startswith(f"rwctl: bad {option}:")
    assert result.err.count("\n") == 1
    assert shared_ws.snapshot() == before


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["adduser", "--uid"],
        ["adduser", "--unknown", "x"],
        ["adduser", "--uid=100008"],
        ["shell", "--name", "alice", "--name", "alice"],
        ["lock", "--name", "Alice"],
        ["users", "--all", "yes"],
        ["init", "--checkout", "/etc", "--group", "g", "--gid", "4243"],
        ["init", "--checkout", "/workspace/../etc", "--group", "g", "--gid", "4243"],
        ["init", "--checkout", "relative", "--group", "g", "--gid", "4243"],
        ["init", "--checkout", CHECKOUT, "--group", "g", "--gid", "0"],
        ["run", "--group", "rwbot-write", "--directory", CHECKOUT, "--log", LOG],
        ["run", "--group", "Bad", "--directory", CHECKOUT, "--log", LOG, "--command=x"],
        ["run", "--group", "g", "--directory", CHECKOUT, "--log", "x", "--command", ""],
        [
            "run",
            *["--group", "g", "--directory", CHECKOUT, "--log", LOG],
            *["--command", "a", "--command", "b"],
        ],
    ],
)
def test_malformed_command_lines_exit_2(shared_ws: Workspace, args: list[str]) -> None:
    before = shared_ws.snapshot()

    result = shared_ws.rwctl(*args)

    assert result.code == 2, result.err
    assert result.err.startswith("rwctl: bad ")
    assert shared_ws.snapshot() == before
