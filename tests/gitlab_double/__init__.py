"""A GitLab double: GitLab's REST API, OAuth provider and git over HTTP, in-process.

GitLab cannot run where the tests run, so this package stands in for it. It
speaks the documented wire formats (docs.gitlab.com/api, /api/oauth2, git's
smart HTTP protocol through the real ``git http-backend``), so the bot's real
clients (python-gitlab, Authlib, git) talk to it unchanged. Modules by area:

- :mod:`.double`: :class:`GitLabDouble`, the server and the test-facing API;
- :mod:`.state`, :mod:`.repos`: in-memory records and real bare repositories;
- :mod:`.api`, :mod:`.rest_core`, :mod:`.rest_notes`, :mod:`.rest_admin`: REST;
- :mod:`.oauth`: OAuth 2 / OIDC provider; :mod:`.git_http`: git over HTTP;
- :mod:`.hooks`: webhook payloads and deliveries;
- :mod:`.recording`: the request log and fault injection.
"""

from tests.gitlab_double.double import GitLabDouble
from tests.gitlab_double.hooks import make_signing_secret, sign
from tests.gitlab_double.recording import RecordedRequest
from tests.gitlab_double.state import DEVELOPER, GUEST, MAINTAINER, OWNER, REPORTER

__all__ = [
    "DEVELOPER",
    "GUEST",
    "MAINTAINER",
    "OWNER",
    "REPORTER",
    "GitLabDouble",
    "RecordedRequest",
    "make_signing_secret",
    "sign",
]
