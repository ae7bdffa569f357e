"""Settings: required variables, validation with one clear line, _FILE secrets."""

import pytest

from bot import settings
from bot.settings import SettingsError

BASE = {
    "RWBOT_GITLAB_URL": "https://gitlab.example.com/",
    "RWBOT_GITLAB_TOKEN": "glpat-secret",
    "RWBOT_WEBHOOK_SECRET": "hook-secret",
    "RWBOT_PUBLIC_URL": "https://bot.example.com",
}


def test_minimal_environment_gives_defaults():
    s = settings.from_env(BASE)
    assert s.gitlab_url == "https://gitlab.example.com"
    assert s.database_url == "sqlite:///rwbot.db"
    assert s.runtime == "docker"
    assert s.start_drafts is True


@pytest.mark.parametrize("name", sorted(BASE))
def test_each_required_variable_is_named_when_missing(name):
    env = {k: v for k, v in BASE.items() if k != name}
    with pytest.raises(SettingsError, match=name):
        settings.from_env(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RWBOT_GITLAB_URL", "gitlab.example.com"),
        ("RWBOT_PUBLIC_URL", "ftp://x"),
        ("RWBOT_RUNTIME", "lxc"),
        ("RWBOT_START_DRAFTS", "perhaps"),
        ("RWBOT_RESYNC_INTERVAL", "soon"),
        ("RWBOT_RESYNC_INTERVAL", "0"),
        ("RWBOT_LOG_FORMAT", "xml"),
        ("RWBOT_WEBHOOK_SIGNING_SECRET", "not-whsec"),
        ("RWBOT_INSTANCE", "Has Spaces"),
        ("RWBOT_WORKSPACE_MEMORY", "lots"),
    ],
)
def test_invalid_values_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        settings.from_env({**BASE, name: value})


def test_secret_can_come_from_a_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("from-file\n")
    env = {k: v for k, v in BASE.items() if k != "RWBOT_GITLAB_TOKEN"}
    s = settings.from_env({**env, "RWBOT_GITLAB_TOKEN_FILE": str(path)})
    assert s.gitlab_token == "from-file"


def test_secret_given_twice_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="not both"):
        settings.from_env({**BASE, "RWBOT_GITLAB_TOKEN_FILE": str(tmp_path)})


def test_secrets_do_not_appear_in_repr():
    s = settings.from_env(BASE)
    assert "glpat-secret" not in repr(s)
    assert "hook-secret" not in repr(s)
