"""Comment commands: parsing a comment body and deciding who may run what.

Cases covered:

- each verb and its arguments: bare prefix, case of prefix and verb, confirm,
  durations, usernames with and without ``@``, invite roles, extra arguments;
- several commands in one comment, the limit of ten and the lines over it, the
  1000-character line limit;
- text a reader does not see as a command: fenced code (backticks and tildes, the
  closing rule), indented code, block quotes, HTML comments (inline and spanning
  lines) and inline code;
- unknown verbs, malformed durations, usernames and roles, each with a reason;
- permissions for every verb at Guest, Reporter, Developer, Maintainer, as the
  author and as a non-member; invites beyond the commenter's own level;
- revokes of someone above the commenter, or of access they could not grant;
- ``parse_permissions`` accepting overrides and naming the bad entry;
- ``help_text`` listing every command;
- properties (Hypothesis): arbitrary text never raises and every command's
  ``line`` is one of the input's lines; fenced, quoted, indented or commented-out
  text never yields commands; never more than ten commands.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import commands
from bot.commands import Command, Verb
from bot.errors import ConfigError
from bot.settings import DEVELOPER, GUEST, MAINTAINER, REPORTER, SettingsError

# The module's definition of lines, restated: CommonMark's line endings.
LINE_BREAK = re.compile(r"\r\n|\r|\n")


def one(body: str, prefix: str = "/workspace") -> Command:
    parsed = commands.parse(body, prefix)
    assert len(parsed) == 1, parsed
    return parsed[0]


# --- verbs and arguments -------------------------------------------------------


@pytest.mark.parametrize(
    "verb",
    [
        Verb.HELP,
        Verb.STATUS,
        Verb.START,
        Verb.STOP,
        Verb.RESTART,
        Verb.SYNC,
        Verb.WHO,
        Verb.REBUILD,
        Verb.DESTROY,
    ],
)
def test_verb_without_arguments_parses_cleanly(verb):
    command = one(f"/workspace {verb}")
    assert command.verb is verb
    assert command.args == ()
    assert command.error is None
    assert command.line == f"/workspace {verb}"


def test_bare_prefix_means_help():
    assert one("/workspace").verb is Verb.HELP


def test_verb_is_case_insensitive_but_prefix_is_exact():
    assert one("/workspace STOP").verb is Verb.STOP
    assert commands.parse("/Workspace stop") == []


def test_prefix_must_be_followed_by_whitespace():
    assert commands.parse("/workspacestop") == []
    assert one("/workspace\tstop").verb is Verb.STOP


def test_up_to_three_leading_spaces_are_allowed_and_dropped_from_line():
    command = one("   /workspace stop  \t")
    assert command.verb is Verb.STOP
    assert command.line == "/workspace stop"


def test_custom_prefix_is_honoured():
    assert one("!ws stop", prefix="!ws").verb is Verb.STOP
    assert commands.parse("/workspace stop", prefix="!ws") == []


@pytest.mark.parametrize("prefix", ["", "two words", "> ws", "`ws", "<ws"])
def test_unusable_prefix_is_a_config_error(prefix):
    with pytest.raises(ConfigError):
        commands.parse("anything", prefix)


@pytest.mark.parametrize("verb", ["stop", "status", "start", "sync", "who"])
def test_extra_arguments_to_a_plain_verb_give_a_reason(verb):
    command = one(f"/workspace {verb} please")
    assert command.verb == verb
    assert command.error == f"`/workspace {verb}` takes no arguments."


def test_help_ignores_its_arguments():
    command = one("/workspace help invite")
    assert command.verb is Verb.HELP
    assert command.args == ("invite",)
    assert command.error is None


@pytest.mark.parametrize("verb", [Verb.REBUILD, Verb.DESTROY])
def test_confirm_flag_is_parsed(verb):
    assert one(f"/workspace {verb} --confirm").confirm is True
    assert one(f"/workspace {verb}").confirm is False


def test_rebuild_with_another_argument_gives_a_reason():
    command = one("/workspace rebuild --force")
    assert command.confirm is False
    assert command.error == "`/workspace rebuild` takes only `--confirm`."


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("30m", 30),
        ("2h", 120),
        ("1d", 24 * 60),
        ("1h30m", 90),
        ("1d2h3m", 24 * 60 + 123),
        ("2H", 120),
        ("365d", 365 * 24 * 60),
    ],
)
def test_extend_parses_durations(text, minutes):
    command = one(f"/workspace extend {text}")
    assert command.error is None
    assert command.duration == timedelta(minutes=minutes)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("90", "Give `90` a unit: `90m` for minutes, `90h` for hours."),
        ("0m", "The duration must be longer than zero."),
        ("0d0h", "The duration must be longer than zero."),
        ("366d", "The duration can be at most 365 days."),
        ("99999999999999999999999d", "The duration can be at most 365 days."),
        ("-1h", "`-1h` is not a duration; write it like `30m`, `2h` or `1d`."),
        ("30m2h", "`30m2h` is not a duration; write it like `30m`, `2h` or `1d`."),
        ("1.5h", "`1.5h` is not a duration; write it like `30m`, `2h` or `1d`."),
        ("soon", "`soon` is not a duration; write it like `30m`, `2h` or `1d`."),
        ("\u0661h", "`\u0661h` is not a duration; write it like `30m`, `2h` or `1d`."),
    ],
)
def test_bad_durations_give_a_reason(text, reason):
    command = one(f"/workspace extend {text}")
    assert command.verb is Verb.EXTEND
    assert command.duration is None
    assert command.error == reason


@pytest.mark.parametrize("body", ["/workspace extend", "/workspace extend 1h 30m"])
def test_extend_needs_exactly_one_duration(body):
    assert one(body).error == "`/workspace extend` needs one duration, such as `2h`."


def test_invite_defaults_to_read_and_accepts_the_at_sign_or_not():
    with_at = one("/workspace invite @alice")
    without = one("/workspace invite alice")
    assert (with_at.target, with_at.role, with_at.error) == ("alice", "read", None)
    assert (without.target, without.role, without.error) == ("alice", "read", None)


@pytest.mark.parametrize("role", ["read", "write", "WRITE"])
def test_invite_takes_a_role(role):
    command = one(f"/workspace invite @bob.smith-2 {role}")
    assert command.target == "bob.smith-2"
    assert command.role == role.lower()
    assert command.error is None


def test_invite_with_unknown_role_gives_a_reason():
    command = one("/workspace invite @bob admin")
    assert command.error == "`admin` is not an access; use `read` or `write`."


@pytest.mark.parametrize(
    "target", ["@", "@-bob", "@.bob", "@bob,", "bob@example.com", "@" + "a" * 256]
)
def test_invalid_usernames_give_a_reason(target):
    for verb in ("invite", "revoke"):
        command = one(f"/workspace {verb} {target}")
        assert command.target is None
        assert command.error is not None
        assert "is not a GitLab username" in command.error


def test_longest_valid_username_is_accepted():
    assert one("/workspace revoke " + "a" * 255).target == "a" * 255


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("/workspace invite", "needs a user, then optionally `read` or `write`."),
        ("/workspace invite @a read x", "needs a user, then optionally"),
        ("/workspace revoke", "`/workspace revoke` needs exactly one user."),
        ("/workspace revoke @a @b", "`/workspace revoke` needs exactly one user."),
    ],
)
def test_invite_and_revoke_arity_is_checked(body, reason):
    command = one(body)
    assert command.error is not None
    assert reason in command.error


def test_unknown_verb_is_unknown_with_a_reason():
    command = one("/workspace frobnicate now")
    assert command.verb is Verb.UNKNOWN
    assert command.args == ("frobnicate", "now")
    assert command.error == "`/workspace frobnicate` is not a command."
    assert command.name == "/workspace frobnicate"


def test_echoed_text_with_backticks_stays_inline_code():
    command = one("/workspace a`@all`")
    assert command.error == "`` /workspace a`@all` `` is not a command."


# --- several commands, limits --------------------------------------------------


def test_several_commands_come_back_in_order_amid_prose():
    body = (
        "Looks good, but first:\n"
        "/workspace sync\r\n"
        "and then\r"
        " /workspace restart\n"
        "thanks! /workspace stop\n"
    )
    assert [c.verb for c in commands.parse(body)] == [Verb.SYNC, Verb.RESTART]


def test_more_than_ten_commands_are_reported_as_ignored():
    body = "\n".join(f"/workspace status {i}" for i in range(13))
    parsed = commands.parse_comment(body)
    assert len(parsed.commands) == commands.MAX_COMMANDS
    assert parsed.ignored == tuple(f"/workspace status {i}" for i in (10, 11, 12))
    assert commands.parse(body) == list(parsed.commands)


def test_lines_over_the_length_limit_are_not_commands():
    fits = "/workspace help " + "x" * (commands.MAX_LINE - 16)
    assert len(fits) == commands.MAX_LINE
    assert one(fits).verb is Verb.HELP
    assert commands.parse(fits + "x") == []


# --- Markdown that hides commands ----------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "```\n/workspace stop\n```",
        "~~~\n/workspace stop\n~~~",
        "```sh\n/workspace stop\n```",
        "  ```\n/workspace stop\n  ```",
        "````\n/workspace stop\n```\n/workspace destroy\n````",
        "~~~\n/workspace stop\n```\n/workspace destroy\n~~~",
        "```\n/workspace stop",  # Unclosed: runs to the end.
        "```\n/workspace stop\n``` not a close\n/workspace destroy\n```",
        "    /workspace stop",
        "\t/workspace stop",
        "  \t/workspace stop",
        "> /workspace stop",
        "   >/workspace stop",
        "`/workspace stop`",
        "Please run `/workspace stop`",
        "<!-- /workspace stop -->",
        "<!--\n/workspace stop\n-->",
        "Note <!-- hidden\n/workspace stop\n--> /workspace destroy",
        "<!-- a --> /workspace stop",
    ],
)
def test_commands_in_code_quotes_and_html_comments_are_ignored(body):
    assert commands.parse(body) == []


@pytest.mark.parametrize(
    "body",
    [
        "```\ncode\n```\n/workspace stop",
        "~~~\ncode\n~~~~\n/workspace stop",
        "``` `inline` ```\n/workspace stop",  # Not a fence: backtick in info.
        "<!-- note -->\n/workspace stop",
        "<!--\nnote\n-->\n/workspace stop",
        "> quoted\n/workspace stop",
        "    indented\n/workspace stop",
    ],
)
def test_commands_after_closed_code_comments_and_quotes_count(body):
    assert one(body).verb is Verb.STOP


def test_html_comment_after_a_command_hides_its_tail_only():
    command = one("/workspace invite @bob <!-- write -->")
    assert command.role == "read"
    assert command.error is None
    assert command.line == "/workspace invite @bob <!-- write -->"


def test_html_comment_opened_on_a_command_line_hides_the_next_lines():
    parsed = commands.parse("/workspace stop <!--\n/workspace destroy\n-->")
    assert [c.verb for c in parsed] == [Verb.STOP]


# --- permissions ---------------------------------------------------------------

NON_MEMBER = None
EXPECTED_LEVEL = {
    Verb.HELP: REPORTER,
    Verb.STATUS: REPORTER,
    Verb.WHO: REPORTER,
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
AUTHOR_MAY = {Verb.INVITE, Verb.REVOKE, Verb.REBUILD, Verb.DESTROY}


@pytest.mark.parametrize("verb", list(EXPECTED_LEVEL))
@pytest.mark.parametrize(
    "level", [NON_MEMBER, GUEST, REPORTER, DEVELOPER, MAINTAINER, commands.OWNER]
)
@pytest.mark.parametrize("is_author", [False, True])
def test_each_verb_needs_its_role_or_authorship(verb, level, is_author):
    decision = commands.authorize(
        Command(verb), access_level=level, is_author=is_author
    )
    by_role = level is not None and level >= EXPECTED_LEVEL[verb]
    assert decision.allowed is (by_role or (is_author and verb in AUTHOR_MAY))
    assert (decision.reason == "") is decision.allowed


def test_refusal_names_the_role_needed_and_the_role_held():
    decision = commands.authorize(
        Command(Verb.DESTROY), access_level=DEVELOPER, is_author=False
    )
    assert decision.reason == (
        "`/workspace destroy` needs the Maintainer role on this project, "
        "or being the merge request's author; you have Developer."
    )


def test_refusal_to_a_non_member_says_so():
    decision = commands.authorize(
        one("/workspace start"), access_level=None, is_author=True
    )
    assert decision.reason == (
        "`/workspace start` needs the Developer role on this project; "
        "you are not a member of this project."
    )


def test_unknown_verbs_are_answered_only_to_reporters():
    unknown = one("/workspace frob")
    guest = commands.authorize(unknown, access_level=GUEST, is_author=True)
    assert not guest.allowed
    assert guest.reason.startswith("`/workspace frob` needs the Reporter role")
    assert commands.authorize(unknown, access_level=REPORTER, is_author=False).allowed


def test_verb_missing_from_permissions_is_refused_to_everyone():
    decision = commands.authorize(
        Command(Verb.DESTROY),
        access_level=commands.OWNER,
        is_author=True,
        permissions={Verb.HELP: REPORTER},
    )
    assert decision == commands.Decision(
        False, "`/workspace destroy` is turned off here."
    )


def test_author_verbs_can_be_narrowed():
    decision = commands.authorize(
        Command(Verb.DESTROY),
        access_level=REPORTER,
        is_author=True,
        author_verbs=frozenset({Verb.INVITE}),
    )
    assert not decision.allowed
    assert "author" not in decision.reason


def test_odd_access_levels_are_named_by_number():
    decision = commands.authorize(
        Command(Verb.START),
        access_level=5,
        is_author=False,
        permissions={Verb.START: 35},
    )
    assert decision.reason == (
        "`/workspace start` needs access level 35 on this project; "
        "you have access level 5."
    )


@pytest.mark.parametrize(
    ("role", "level", "allowed"),
    [
        ("read", REPORTER, True),
        ("write", REPORTER, False),
        ("write", DEVELOPER, True),
        ("read", GUEST, False),
        ("read", None, False),
        ("write", MAINTAINER, True),
    ],
)
def test_invite_never_grants_beyond_the_commenters_own_level(role, level, allowed):
    assert commands.may_grant(role, level).allowed is allowed


def test_grant_refusal_explains_itself():
    assert commands.may_grant("write", REPORTER).reason == (
        "Granting write access needs the Developer role on this project, "
        "as nobody may grant more than they have; you have Reporter."
    )


def test_grant_levels_follow_the_configured_ones():
    assert not commands.may_grant("read", REPORTER, read_level=DEVELOPER).allowed
    assert commands.may_grant("write", DEVELOPER, write_level=DEVELOPER).allowed
    assert not commands.may_grant("admin", MAINTAINER).allowed


@pytest.mark.parametrize(
    ("target_level", "target_role", "commenter_level", "allowed"),
    [
        (MAINTAINER, "write", REPORTER, False),  # a Reporter author, a Maintainer
        (MAINTAINER, "write", None, False),  # a non-member fork author
        (MAINTAINER, "write", DEVELOPER, False),  # above the commenter's own role
        (MAINTAINER, "write", MAINTAINER, True),
        (DEVELOPER, "write", DEVELOPER, True),
        (REPORTER, "write", REPORTER, False),  # invited to write: more than theirs
        (REPORTER, "read", REPORTER, True),
        (GUEST, None, REPORTER, True),  # nothing to take beyond a Guest's level
        (GUEST, None, None, False),
        (None, None, None, True),  # not a member: nothing to take
    ],
)
def test_revoke_never_takes_more_than_the_commenter_could_give(
    target_level, target_role, commenter_level, allowed
):
    decision = commands.may_revoke("@mia", target_level, target_role, commenter_level)
    assert decision.allowed is allowed
    assert bool(decision.reason) is not allowed


def test_revoke_refusal_names_the_role_and_the_commenters_own():
    assert commands.may_revoke("@mia", MAINTAINER, "write", REPORTER).reason == (
        "`@mia` has Maintainer; revoking their access needs at least that role "
        "on this project, as nobody may take more than they could give; "
        "you have Reporter."
    )
    assert commands.may_revoke("@rita", REPORTER, "write", REPORTER).reason == (
        "`@rita` has write access; revoking it needs the Developer role on this "
        "project, as nobody may take more than they could give; you have Reporter."
    )


def test_parse_permissions_overrides_the_defaults():
    levels = commands.parse_permissions(" start=40, stop = developer ,WHO=Guest,")
    assert levels[Verb.START] == MAINTAINER
    assert levels[Verb.STOP] == DEVELOPER
    assert levels[Verb.WHO] == GUEST
    assert levels[Verb.DESTROY] == MAINTAINER
    assert commands.parse_permissions("") == commands.DEFAULT_PERMISSIONS


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("start", "'start'"),
        ("launch=30", "'launch=30'"),
        ("start=31", "'start=31'"),
        ("start=boss", "'start=boss'"),
        ("start=", "'start='"),
        ("stop=30,stop=40", "'stop=40'"),
        ("start=-30", "'start=-30'"),
    ],
)
def test_parse_permissions_names_the_bad_entry(text, entry):
    with pytest.raises(SettingsError, match=f"RWBOT_COMMAND_PERMISSIONS: {entry}"):
        commands.parse_permissions(text)


def test_help_text_lists_every_command_with_its_role():
    text = commands.help_text("!ws")
    for verb in EXPECTED_LEVEL:
        assert f"| `!ws {verb}" in text
    assert "| `!ws extend <duration>` |" in text
    assert "| `!ws invite @user [read\\|write]` |" in text
    assert "Maintainer or above, or the merge request's author" in text
    assert "unknown" not in text


def test_help_text_shows_overridden_roles():
    text = commands.help_text(permissions={Verb.START: MAINTAINER})
    assert "| `/workspace start` | Start the workspace. | Maintainer or above |" in text
    assert (
        "| `/workspace stop` | Stop the workspace; its files are kept. | nobody" in text
    )


# --- properties ----------------------------------------------------------------

# Text that is likely to contain commands and Markdown that hides them.
PIECES = st.sampled_from(
    [
        "/workspace",
        "/workspace stop",
        "/workspace extend 2h",
        "/workspace invite @a write",
        " ",
        "   ",
        "\t",
        ">",
        "`",
        "```",
        "~~~",
        "<!--",
        "-->",
        "\n",
        "\r\n",
        "\r",
        "x",
    ]
)
MARKDOWNISH = st.lists(st.one_of(PIECES, st.text(max_size=5)), max_size=40).map("".join)
NO_BREAKS = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",))
)
LINES = st.lists(st.one_of(PIECES.filter(lambda p: p not in "\r\n"), NO_BREAKS))


@given(st.one_of(st.text(), MARKDOWNISH))
def test_any_text_parses_into_lines_of_the_input(body):
    parsed = commands.parse_comment(body)
    sources = [line.rstrip() for line in LINE_BREAK.split(body)]
    for command in parsed.commands:
        assert command.line.startswith("/workspace")
        assert any(
            source == " " * indent + command.line
            for source in sources
            for indent in range(4)
        )
    assert len(parsed.commands) <= commands.MAX_COMMANDS


@given(
    st.lists(MARKDOWNISH, max_size=15),
    st.sampled_from("`~"),
    st.integers(0, 3),
    st.booleans(),
)
def test_text_inside_a_code_fence_never_yields_commands(lines, char, indent, close):
    body = "\n".join(lines)
    longest = max(
        (len(run) for run in re.findall(f"{re.escape(char)}+", body)), default=0
    )
    fence = " " * indent + char * max(3, longest + 1)
    wrapped = f"{fence}\n{body}" + (f"\n{fence}" if close else "")
    assert commands.parse(wrapped) == []


@given(LINES, st.sampled_from(["> ", ">", "    ", "\t", "   > "]))
def test_quoted_or_indented_lines_never_yield_commands(lines, marker):
    assert commands.parse("\n".join(marker + line for line in lines)) == []


@given(MARKDOWNISH.filter(lambda text: "-->" not in text))
def test_text_inside_an_html_comment_never_yields_commands(body):
    assert commands.parse(f"<!--\n{body}\n-->") == []


@given(st.lists(st.sampled_from(list(Verb)), min_size=0, max_size=30))
def test_every_command_line_up_to_the_limit_is_a_command(verbs):
    body = "\n".join(f"/workspace {verb}" for verb in verbs)
    parsed = commands.parse_comment(body)
    assert len(parsed.commands) == min(len(verbs), commands.MAX_COMMANDS)
    assert len(parsed.ignored) == max(0, len(verbs) - commands.MAX_COMMANDS)
    assert [c.verb for c in parsed.commands] == verbs[: commands.MAX_COMMANDS]


@given(st.integers(0, 400), st.integers(0, 50), st.integers(0, 200))
def test_durations_in_range_parse_and_others_give_a_reason(days, hours, minutes):
    text = f"{days}d{hours}h{minutes}m"
    command = one(f"/workspace extend {text}")
    total = timedelta(days=days, hours=hours, minutes=minutes)
    if timedelta(0) < total <= timedelta(days=365):
        assert command.duration == total
        assert command.error is None
    else:
        assert command.duration is None
        assert command.error is not None
