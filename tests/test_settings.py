"""Settings: required variables, validation with one clear line, _FILE secrets.

Cases also: the database URL is parsed as SQLAlchemy would and must name a
supported driver (SQLite or PostgreSQL through psycopg), without the refusal
repeating a password it may hold. RWBOT_ENVIRONMENT_NAME is checked on the
names it makes (placeholders other than ``{iid}``, a name shared by every MR,
names GitLab refuses); RWBOT_DEVFILE_* caps and image patterns.
"""

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


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///rwbot.db",
        "sqlite:////data/rwbot.db",
        "postgresql+psycopg://rwbot:pw@db.example.com:5432/rwbot",
    ],
)
def test_supported_database_urls_are_taken_as_given(url):
    assert settings.from_env({**BASE, "RWBOT_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("nonsense", "not a database URL"),
        ("postgresql+psycopg://rwbot:hunter2@db:notaport/rwbot", "not a database URL"),
        ("mysql://rwbot:hunter2@db/rwbot", "driver mysql is not supported"),
        ("postgresql://rwbot:hunter2@db/rwbot", "driver postgresql is not"),
    ],
)
def test_a_bad_database_url_is_refused_in_one_line_naming_the_variable(url, reason):
    with pytest.raises(SettingsError) as refused:
        settings.from_env({**BASE, "RWBOT_DATABASE_URL": url})

    message = str(refused.value)
    assert message.startswith("RWBOT_DATABASE_URL: ")
    assert reason in message and "postgresql+psycopg" in message
    assert "\n" not in message and "hunter2" not in message


# Environment name and devfile caps ---------------------------------------------


def test_environment_name_defaults_to_one_per_merge_request():
    s = settings.from_env(BASE)
    assert s.environment_name.format(iid=7) == "review-workspace/mr-7"


@pytest.mark.parametrize(
    "template", ["review/mr-{iid}", "Review Apps/${iid}.x", "mr {iid:05d}", ""]
)
def test_environment_names_gitlab_accepts_are_taken(template):
    s = settings.from_env({**BASE, "RWBOT_ENVIRONMENT_NAME": template})
    assert s.environment_name == template


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("review/{project}", "only {iid}"),  # .format would raise KeyError
        ("review/{}", "only {iid}"),  # IndexError
        ("review/{iid", "only {iid}"),  # ValueError: unbalanced brace
        ("review/{iid.nope}", "only {iid}"),  # AttributeError
        ("review-workspace", "must contain {iid}"),  # every MR would share it
        ("/mr-{iid}", "not a GitLab environment name"),
        ("mr-{iid}/", "not a GitLab environment name"),
        ("mr:{iid}", "not a GitLab environment name"),
        ("mr-{iid:>300}", "not a GitLab environment name"),  # over 255
        ("x" * 250 + "{iid}", "not a GitLab environment name"),  # at iid 2**31-1
    ],
)
def test_environment_names_gitlab_would_refuse_stop_start_up(template, why):
    with pytest.raises(SettingsError, match="RWBOT_ENVIRONMENT_NAME") as caught:
        settings.from_env({**BASE, "RWBOT_ENVIRONMENT_NAME": template})
    assert why in str(caught.value)


def test_devfile_caps_default_to_8gi_and_4_cpus_and_any_image():
    s = settings.from_env(BASE)
    assert (s.devfile_max_memory, s.devfile_max_cpu, s.devfile_images) == (
        "8Gi",
        "4",
        (),
    )


def test_devfile_settings_are_read_and_trimmed():
    s = settings.from_env(
        {
            **BASE,
            "RWBOT_DEVFILE_IMAGES": " registry.example/* , docker.io/library/python:*,",
            "RWBOT_DEVFILE_MAX_MEMORY": "512Mi",
            "RWBOT_DEVFILE_MAX_CPU": "500m",
        }
    )
    assert s.devfile_images == ("registry.example/*", "docker.io/library/python:*")
    assert (s.devfile_max_memory, s.devfile_max_cpu) == ("512Mi", "500m")


@pytest.mark.parametrize("name", ["RWBOT_DEVFILE_MAX_MEMORY", "RWBOT_DEVFILE_MAX_CPU"])
def test_an_empty_devfile_cap_means_no_cap(name):
    s = settings.from_env({**BASE, name: ""})
    field = name.removeprefix("RWBOT_").lower()
    assert getattr(s, field) is None


@pytest.mark.parametrize("value", ["8GB", "lots", "-1", "1 Gi"])
@pytest.mark.parametrize("name", ["RWBOT_DEVFILE_MAX_MEMORY", "RWBOT_DEVFILE_MAX_CPU"])
def test_a_devfile_cap_must_be_a_quantity(name, value):
    with pytest.raises(SettingsError, match=name):
        settings.from_env({**BASE, name: value})
