# The bot's own image: gunicorn serving the web app (or `rwbot worker`), as a
# non-root user. git is needed to fetch merge requests for the Docker runtime.
#
#   podman build -t review-workspace-bot .        (docker build works the same)
#
# The defaults below are the public images. Every input can be swapped by name,
# which is how tests/test_image.py builds this file with no registry and no
# network (see README "Installing"):
#   --build-arg PYTHON_IMAGE=…          any Debian-based image with python3 -m venv
#   --build-context assets=node_modules  xterm.js from a local npm install
#   --build-context wheels=DIR           a wheelhouse of the runtime dependencies
#   --build-arg PIP_OPTIONS=--no-index   and nothing from a package index
ARG NODE_IMAGE=docker.io/library/node:20-bookworm-slim
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${NODE_IMAGE} AS npm
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

# xterm.js laid out as a node_modules directory, so that a named build context
# pointing at one can stand in for the npm stage.
FROM scratch AS assets
COPY --from=npm /assets/node_modules/@xterm /@xterm

# Empty unless the build brings a wheelhouse.
FROM scratch AS wheels

FROM ${PYTHON_IMAGE}

# apt only when the base lacks git: an offline base brings it, and apt cannot
# reach a mirror there.
RUN if ! dpkg -s git ca-certificates >/dev/null 2>&1; then \
      apt-get update \
      && apt-get install -y --no-install-recommends git ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin rwbot \
 && install -d -o 10001 -g 10001 -m 0700 /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY templates ./templates
COPY --from=assets /@xterm ./node_modules/@xterm

# A virtual environment, because Debian's python3 refuses to install into the
# system (PEP 668); editable, because the bot finds templates/ and node_modules/
# next to its package.
ARG PIP_OPTIONS=""
RUN --mount=type=bind,from=wheels,target=/wheels \
    python3 -m venv /opt/rwbot \
 && /opt/rwbot/bin/pip install --no-cache-dir --find-links /wheels ${PIP_OPTIONS} -e . \
 && /opt/rwbot/bin/python3 -c "import bot.app"

USER 10001
# PATH in full: an imported root filesystem has no PATH of its own to extend.
ENV PATH=/opt/rwbot/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 PYTHONUNBUFFERED=1 RWBOT_LOG_FORMAT=json \
    RWBOT_DATABASE_URL=sqlite:////data/rwbot.db
# SQLite's file lives here (mount a volume); replicas use PostgreSQL instead.
VOLUME /data
EXPOSE 8080
# What an install may tune (the Helm chart sets its own) is in gunicorn's
# variable; the command keeps what must not change. No control socket:
# gunicorn would put it under $HOME, and this user has none.
ENV GUNICORN_CMD_ARGS="--bind=0.0.0.0:8080 --threads=64"
CMD ["gunicorn", "--worker-class=gthread", "--no-control-socket", \
     "bot.app:create_app()"]
