"""``python -m tests.gitlab_double``: serve a GitLab double until SIGTERM.

For a bot that runs outside the test process, e.g. in a container sharing this
process's network namespace. The first line on stdout is JSON with the double's
``url`` and the bot user's ``token``; the test reads it from a pipe.
"""

from __future__ import annotations

import json
import signal

from tests.gitlab_double import GitLabDouble

STOP = {signal.SIGTERM, signal.SIGINT}


def main() -> None:
    # Blocked before the server thread starts, so that only sigwait sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP)
    with GitLabDouble() as gitlab:
        print(json.dumps({"url": gitlab.url, "token": gitlab.token}), flush=True)
        signal.sigwait(STOP)


if __name__ == "__main__":
    main()
