"""Joining a workspace as yourself, in a real browser (Debian's Chromium).

Cases: a reviewer follows the join link from the MR comment, signs in at the
GitLab double and lands in a terminal where ``whoami`` is their own username
and git knows their name and email; a Reporter cannot write the checkout while a
Developer can; user A cannot read user B's home; a non-member sees the refusal
page; joining twice reuses the account (and a plain username such as ``dana``
is ``whoami`` exactly); a user removed from the project is refused on the next
join; the comment lists who joined with which role.
"""

import re

import pytest

from tests import browser
from tests.gitlab_double import DEVELOPER, GUEST, REPORTER


@pytest.fixture(scope="module")
def chromium():
    with browser.chromium() as context:
        yield context


@pytest.fixture
def workspace(stack):
    project = stack.gitlab.add_project("team/app", files={"README.md": "hello\n"})
    author = stack.gitlab.add_user("author")
    stack.gitlab.set_member(project, author, DEVELOPER)
    mr = stack.gitlab.open_mr(
        project, "feature", {"app.py": "print(1)\n"}, author=author
    )
    stack.deliver(stack.gitlab.mr_hook(mr, "open"))
    stack.settle_ready(mr)
    return project, mr


def join_url(stack, body):
    match = re.search(r"\((http://[^)]+/w/\d+/\d+)\)", body)
    assert match, body
    return match.group(1)


def open_terminal(chromium, stack, mr, user):
    """Sign in as ``user`` and open the join link in a fresh page."""
    stack.gitlab.login_as(user)
    chromium.clear_cookies()
    page = chromium.new_page()
    page.goto(join_url(stack, stack.comment(mr)))
    return page


def wait_connected(page):
    # text-is matches the whole text: "disconnected: ..." is not "connected".
    page.wait_for_selector("#status:text-is('connected')", timeout=30_000)


def test_a_reviewer_lands_in_a_terminal_as_themselves(chromium, stack, workspace):
    project, mr = workspace
    dana = stack.gitlab.add_user(
        "dana.dev", name="Dana Dev", commit_email="dana@corp.example"
    )
    stack.gitlab.set_member(project, dana, DEVELOPER)

    page = open_terminal(chromium, stack, mr, dana)
    wait_connected(page)

    assert browser.run(page, "whoami") == "_dana_dev-" + str(dana["id"])
    assert browser.run(page, "git config user.email") == "dana@corp.example"
    assert browser.run(page, "git config user.name") == "Dana Dev"
    assert browser.run(page, "pwd") == "/workspace/team/app"
    page.close()


def test_a_reporter_reads_but_cannot_write_while_a_developer_can(
    chromium, stack, workspace
):
    project, mr = workspace
    rita = stack.gitlab.add_user("rita", name="Rita Reporter")
    dev = stack.gitlab.add_user("devon", name="Devon")
    stack.gitlab.set_member(project, rita, REPORTER)
    stack.gitlab.set_member(project, dev, DEVELOPER)

    page = open_terminal(chromium, stack, mr, rita)
    wait_connected(page)
    assert browser.run(page, "cat app.py") == "print(1)"
    assert "denied" in browser.run(page, "echo x > app.py 2>&1; echo rc=$?")
    page.close()

    page = open_terminal(chromium, stack, mr, dev)
    wait_connected(page)
    assert browser.run(page, "echo x > new.txt && cat new.txt") == "x"
    page.close()


def test_a_user_cannot_read_another_users_home(chromium, stack, workspace):
    project, mr = workspace
    alice = stack.gitlab.add_user("alice")
    bob = stack.gitlab.add_user("bob")
    for user in (alice, bob):
        stack.gitlab.set_member(project, user, DEVELOPER)

    page = open_terminal(chromium, stack, mr, bob)
    wait_connected(page)
    browser.run(page, "echo secret > ~/notes")
    page.close()

    page = open_terminal(chromium, stack, mr, alice)
    wait_connected(page)
    out = browser.run(page, "cat /home/bob/notes 2>&1; ls /home/bob 2>&1")
    assert "secret" not in out and "denied" in out
    page.close()


def test_a_non_member_sees_the_refusal_page(chromium, stack, workspace):
    project, mr = workspace
    guest = stack.gitlab.add_user("gus")
    stack.gitlab.set_member(project, guest, GUEST)
    stranger = stack.gitlab.add_user("stranger")

    for user in (guest, stranger):
        page = open_terminal(chromium, stack, mr, user)
        assert page.locator("#title").inner_text() == "You cannot join"
        assert "Reporter" in page.locator("#reason").inner_text()
        page.close()
    assert len(stack.containers(mr)) == 1
    users = stack.run_in(mr, "getent", "passwd")
    assert "gus" not in users and "stranger" not in users


def test_joining_twice_reuses_the_account(chromium, stack, workspace):
    project, mr = workspace
    dana = stack.gitlab.add_user("dana")
    stack.gitlab.set_member(project, dana, DEVELOPER)

    page = open_terminal(chromium, stack, mr, dana)
    wait_connected(page)
    # A plain GitLab username is the Linux name as it is.
    assert browser.run(page, "whoami") == "dana"
    browser.run(page, "echo kept > ~/file")
    page.close()
    page = open_terminal(chromium, stack, mr, dana)
    wait_connected(page)
    assert browser.run(page, "cat ~/file; id -u") == f"kept\n{100000 + dana['id']}"
    page.close()
    entries = stack.run_in(mr, "getent", "passwd").splitlines()
    assert [e.split(":")[0] for e in entries].count("dana") == 1


def test_a_removed_member_is_refused_on_the_next_join(chromium, stack, workspace):
    project, mr = workspace
    dana = stack.gitlab.add_user("dana")
    stack.gitlab.set_member(project, dana, DEVELOPER)
    page = open_terminal(chromium, stack, mr, dana)
    wait_connected(page)
    page.close()

    stack.gitlab.remove_member(project, dana)
    page = open_terminal(chromium, stack, mr, dana)
    assert page.locator("#title").inner_text() == "You cannot join"
    page.close()
    assert "locked" in stack.run_in(mr, "/opt/rwbot/rwctl", "users")


def test_the_comment_lists_who_joined_with_which_role(chromium, stack, workspace):
    project, mr = workspace
    rita = stack.gitlab.add_user("rita")
    stack.gitlab.set_member(project, rita, REPORTER)
    page = open_terminal(chromium, stack, mr, rita)
    wait_connected(page)
    page.close()

    stack.settle()
    assert "@rita (read)" in stack.comment(mr)
