"""``make demo``: the whole review-workspace flow on this machine, run as root.

Starts a Podman API service, the GitLab double (GitLab cannot run here) and the
bot as a real ``rwbot serve`` process; registers the bot's webhook with
``rwbot hooks install`` and its OAuth application; creates three users and the
project ``demo/app``; opens a merge request and delivers its webhook to the hook
the bot registered; prints the bot's comment and how to join; pushes a commit
and prints the comment again, now saying the workspace is behind.

Then it keeps everything running until Ctrl-C (``--exit`` stops right away) and
removes what it started: the workspace containers and volumes, the bot, the
double and the Podman service.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

# The GitLab double and the harness live in tests/, beside bot/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker
import pytest

from bot import comments
from bot.runtime.docker import DockerRuntime
from tests import harness, services
from tests.gitlab_double import (
    DEVELOPER,
    MAINTAINER,
    REPORTER,
    GitLabDouble,
)

PROJECT = "demo/app"
READY_TIMEOUT = 180.0
#: Who can sign in at the double, and their role on the project.
PEOPLE = (
    ("maria", "Maria Maintainer", MAINTAINER, "Maintainer"),
    ("dana", "Dana Developer", DEVELOPER, "Developer"),
    ("rita", "Rita Reporter", REPORTER, "Reporter"),
)


class DemoError(Exception):
    """A step failed; the message says which and why, for a person."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080, help="the bot's port")
    parser.add_argument(
        "--gitlab-port", type=int, default=8929, help="the GitLab double's port"
    )
    parser.add_argument(
        "--instance",
        default="demo",
        help="labels the demo's containers (lower-case letters, digits, '-')",
    )
    parser.add_argument(
        "--exit", action="store_true", help="stop and clean up after printing"
    )
    args = parser.parse_args(argv)

    # SIGTERM takes the same way out as Ctrl-C, so cleanup always runs; SIGINT
    # is set too because a shell starts background jobs with it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        with contextlib.ExitStack() as cleanup:
            gitlab, bot = start(args, cleanup)
            tell_the_story(gitlab, bot)
            if not args.exit:
                with contextlib.suppress(KeyboardInterrupt):
                    wait_for_ctrl_c(gitlab)
            say("\nstopping: removing the workspaces, the bot and the services ...")
    except KeyboardInterrupt:
        print("demo: interrupted; what was started has been removed", file=sys.stderr)
        return 130
    except DemoError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    say("done: everything the demo started is gone")
    return 0


def start(
    args: argparse.Namespace, cleanup: contextlib.ExitStack
) -> tuple[GitLabDouble, harness.BotProcess]:
    """Podman, the GitLab double and the bot; ``cleanup`` undoes each of them."""
    check_machine()
    tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="rwdemo-")))

    say("starting the Podman API service ...")
    docker_host = podman(cleanup)

    gitlab = cleanup.enter_context(gitlab_double(args.gitlab_port))
    say(f"GitLab double: {gitlab.url}")

    public_url = f"http://127.0.0.1:{args.port}"
    client_id, client_secret = gitlab.register_oauth_app(f"{public_url}/auth/callback")
    settings = harness.bot_settings(
        gitlab,
        public_url,
        f"sqlite:///{tmp}/bot.db",
        oauth_client_id=client_id,
        oauth_client_secret=client_secret,
    ).with_overrides(instance=args.instance, webhook_secret=secrets.token_hex(16))
    bot = harness.BotProcess(
        settings, docker_host, tmp / "bot.log", extra_env={"RWBOT_LOG_FORMAT": "plain"}
    )
    cleanup.callback(remove_workspaces, docker_host, settings.instance)
    cleanup.callback(bot.stop)
    say(f"starting the bot (rwbot serve) at {public_url} ...")
    try:
        bot.start()
    except (RuntimeError, TimeoutError) as err:
        raise DemoError(
            f"the bot did not start; its log ends with:\n{bot.log_tail()}"
        ) from err

    return gitlab, bot


def tell_the_story(gitlab: GitLabDouble, bot: harness.BotProcess) -> None:
    """People and a project, the bot's hook, an MR and a push, as a person sees
    them in GitLab: through the bot's comment."""
    public_url = bot.settings.public_url
    project = gitlab.add_project(
        PROJECT,
        files={
            "README.md": "# demo app\n\nA project for the review workspace demo.\n",
            "app.py": 'print("hello")\n',
        },
    )
    users = {}
    for username, name, level, _role in PEOPLE:
        users[username] = gitlab.add_user(username, name=name)
        gitlab.set_member(project, users[username], level)

    install_hook(bot)
    if not any(
        h["url"] == f"{public_url}/webhooks/gitlab" for h in gitlab.hooks(project)
    ):
        raise DemoError("rwbot hooks install reported success but no hook exists")

    mr = gitlab.open_mr(
        project,
        "greet-by-name",
        {"app.py": 'import sys\n\nprint(f"hello, {sys.argv[1]}")\n'},
        title="Greet by name",
        author=users["dana"],
    )
    say(f"\nopened merge request !{mr['iid']} '{mr['title']}' on {PROJECT}")
    deliver(gitlab, gitlab.mr_hook(mr, "open"))
    body = wait_for_comment(gitlab, bot, mr, "the workspace to be ready", "ready")
    show_comment(mr, body)
    link = comments.join_url(public_url, mr["project_id"], mr["iid"])
    if link not in body:
        raise DemoError(f"the comment has no join link ({link})")
    show_how_to_join(link, gitlab.url)

    new_sha = gitlab.push(mr, {"app.py": 'print("hello, reviewer")\n'}, "Say hello")
    say(f"\npushed {new_sha[:8]} to the merge request's branch")
    deliver(gitlab, gitlab.mr_hook(mr, "update"))
    body = wait_for_comment(
        gitlab, bot, mr, "the comment to say it is behind", "Behind", new_sha[:8]
    )
    show_comment(mr, body)


# -- the parts ------------------------------------------------------------------


def check_machine() -> None:
    if os.geteuid() != 0:
        raise DemoError("run the demo as root (rootful Podman): sudo make demo")
    if shutil.which("podman") is None:
        raise DemoError("podman is not installed; run scripts/setup.sh")
    if not services.ROOTFS_TAR.exists():
        raise DemoError(f"{services.ROOTFS_TAR} is missing; run scripts/setup.sh")


def podman(cleanup: contextlib.ExitStack) -> str:
    """Start :func:`tests.services.podman_service` (its pytest skips become
    errors) until ``cleanup``; return its DOCKER_HOST."""
    try:
        return cleanup.enter_context(services.podman_service())
    except (pytest.skip.Exception, pytest.fail.Exception) as err:
        raise DemoError(f"Podman is not available: {err.msg}") from None
    except TimeoutError as err:
        raise DemoError(f"the Podman API service did not start: {err}") from err


@contextlib.contextmanager
def gitlab_double(port: int) -> Iterator[GitLabDouble]:
    gitlab = GitLabDouble()
    try:
        gitlab.start(port)  # a person needs a URL that stays the same
    except OSError as err:
        raise DemoError(
            f"cannot listen on 127.0.0.1:{port} ({err.strerror});"
            " choose another port with --gitlab-port"
        ) from err
    try:
        yield gitlab
    finally:
        gitlab.stop()


def install_hook(bot: harness.BotProcess) -> None:
    """``rwbot hooks install`` with the bot's own configuration."""
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "hooks", "install", PROJECT],
        env=bot.env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DemoError(f"rwbot hooks install failed: {done.stderr.strip()}")
    say(f"rwbot hooks install {PROJECT}: {done.stdout.strip()}")


def deliver(gitlab: GitLabDouble, payload: dict[str, Any]) -> None:
    """Send an event to the project's hooks, as GitLab would."""
    action = payload["object_attributes"]["action"]
    answers = gitlab.deliver_to_hooks(payload)
    if len(answers) != 1:
        raise DemoError(f"expected one webhook on {PROJECT}, found {len(answers)}")
    if not answers[0].ok:
        raise DemoError(
            f"the bot refused the {action} webhook:"
            f" {answers[0].status_code} {answers[0].text.strip()}"
        )
    say(f"delivered the '{action}' webhook: {answers[0].status_code}")


def wait_for_comment(
    gitlab: GitLabDouble,
    bot: harness.BotProcess,
    mr: dict[str, Any],
    what: str,
    *words: str,
) -> str:
    say(f"waiting for {what} ...")
    marker = comments.marker(mr["project_id"], mr["iid"])

    def bodies() -> list[str] | None:
        found = [
            str(n["body"])
            for n in gitlab.notes(mr)
            if n["author"]["id"] == gitlab.bot_user["id"] and marker in n["body"]
        ]
        if len(found) > 1 or (found and all(w in found[0] for w in words)):
            return found
        return None

    try:
        found = services.wait_for(bodies, timeout=READY_TIMEOUT, what=what)
    except TimeoutError:
        raise DemoError(
            f"timed out after {READY_TIMEOUT:.0f} s waiting for {what};"
            f" the bot's log ends with:\n{bot.log_tail()}"
        ) from None
    assert isinstance(found, list)
    if len(found) > 1:
        raise DemoError(f"the bot posted {len(found)} comments instead of one")
    return str(found[0])


def remove_workspaces(docker_host: str, instance: str) -> None:
    runtime = DockerRuntime(docker.DockerClient(base_url=docker_host), instance)
    for listed in list(runtime.list_ours()):
        runtime.remove(listed.key)


# -- what a person reads ----------------------------------------------------------


def say(text: str) -> None:
    print(text, flush=True)


def show_comment(mr: dict[str, Any], body: str) -> None:
    """The comment's Markdown exactly as the bot wrote it (GitLab hides the
    marker on its last line, an HTML comment)."""
    say(f"\n--- the bot's comment on !{mr['iid']} ---")
    say(body.rstrip())
    say("--- end of comment ---")


def show_how_to_join(link: str, gitlab_url: str) -> None:
    people = "\n".join(f"  - {name} ({role})" for _user, name, _level, role in PEOPLE)
    say(
        f"\nJoin link: {link}\n\n"
        "To join, open the link in a browser on this machine. You are sent to\n"
        f"the GitLab double ({gitlab_url}) to sign in; nobody is signed in\n"
        "there, so its sign-in page lists the users as buttons. Pick one:\n"
        f"{people}\n"
        "You land in a terminal inside the workspace as your own Linux user;\n"
        "a Reporter can read the checkout, a Developer or Maintainer can change it."
    )


def wait_for_ctrl_c(gitlab: GitLabDouble) -> NoReturn:
    """Keep running; Enter signs out of the double so another user can join."""
    say(
        "\nEverything keeps running. Press Enter to sign out of the GitLab double"
        " (to join as someone else); press Ctrl-C to stop and clean up."
    )
    while True:
        if not sys.stdin.readline():
            # No terminal to read from: wait for Ctrl-C or SIGTERM.
            while True:
                signal.pause()
        gitlab.login_as(None)
        say("signed out at the GitLab double; the next join asks who you are")


def _interrupt(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
