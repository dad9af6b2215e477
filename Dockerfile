# One image for every service; the command picks the service:
#   docker run IMAGE                                   -> the gateway (the default CMD)
#   docker run IMAGE python -m backup_files            -> a service: backup_database, backup_files,
#                                                         backup_verification, backup_retention
#   docker run IMAGE backupctl migrate                 -> apply the catalog schema (any command of backupctl)
# Configuration comes only from BACKUP_* environment variables (see the README).

# The admin page (client/): a Next.js static export, which the gateway serves from client/out.
FROM node:20-slim AS admin-page
ENV NEXT_TELEMETRY_DISABLED=1
WORKDIR /client
# The lock file first, so a source change reuses the installed node_modules layer. .npmrc forbids
# install scripts (nothing needs one).
COPY client/package.json client/package-lock.json client/.npmrc ./
RUN npm ci
COPY client/ ./
RUN npm run build

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# MariaDB's command-line client, for operators: the services never call it (they speak the protocol
# themselves), but it replays a database part's SQL by hand and checks a server from the container.
RUN apt-get update \
    && apt-get install -y --no-install-recommends mariadb-client \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 backup \
    && useradd --system --uid 10001 --gid backup --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin backup

WORKDIR /app

# Dependencies first, from the lock file alone, so a source change reuses this layer.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# The whole repository (see .dockerignore): the services read infra/ (migrations, default
# documents, the queue topology) relative to their package files at run time, hence the editable
# install. Byte-compiled here, as the containers may run with a read-only root filesystem.
COPY . .
RUN pip install --no-deps -e . \
    && python -m compileall -q libs services
COPY --from=admin-page /client/out ./client/out

# Where the services read and write: named volumes mounted here start out owned by `backup`.
RUN mkdir -p /data/backups /data/app/uploads /data/app/configs /data/app/logs /data/restores \
    && chown -R backup:backup /data

ENV BACKUP_GATEWAY_HOST=0.0.0.0 \
    BACKUP_GATEWAY_PORT=8080 \
    BACKUP_WORKER_HOST=0.0.0.0 \
    BACKUP_STORAGE_DIR=/data/backups \
    BACKUP_UPLOADS_DIR=/data/app/uploads \
    BACKUP_CONFIGS_DIR=/data/app/configs \
    BACKUP_LOGS_DIR=/data/app/logs \
    BACKUP_RESTORE_DIR=/data/restores \
    BACKUP_LOG_FORMAT=json

USER 10001:10001
# The gateway; then the /healthz, /readyz and /metrics of database_backup, file_backup,
# verification and retention (BACKUP_*_PORT).
EXPOSE 8080 8081 8082 8083 8084

# GET /healthz of the gateway; a container running another service sets HEALTHCHECK_URL to its
# own (docker-compose.yml sets a health check of its own for every service instead). Python, as the
# slim image has no curl; proxies are bypassed on purpose.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.build_opener(r.ProxyHandler({})).open(os.environ.get('HEALTHCHECK_URL') or 'http://127.0.0.1:%s/healthz' % os.environ.get('BACKUP_GATEWAY_PORT', '8080'), timeout=4)"]

CMD ["python", "-m", "backup_gateway"]
