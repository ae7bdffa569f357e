# The bot's own image: gunicorn serving the web app (or `rwbot worker`), as a
# non-root user. git is needed to fetch merge requests for the Docker runtime.
FROM node:20-bookworm-slim AS assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin rwbot

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY templates ./templates
COPY --from=assets /assets/node_modules/@xterm ./node_modules/@xterm
RUN pip install --no-cache-dir -e . && python -c "import bot.app"

USER 10001
ENV PYTHONUNBUFFERED=1 RWBOT_LOG_FORMAT=json
EXPOSE 8080
CMD ["gunicorn", "--bind", "0.0.0.0:8080", "--worker-class", "gthread", \
     "--threads", "64", "bot.app:create_app()"]
