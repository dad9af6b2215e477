# One image for every service; the command picks the service:
#   docker run IMAGE                             -> the gateway (the default CMD)
#   docker run IMAGE python -m backup_files      -> a worker (backup_database, backup_files, ...)
#   docker run IMAGE backupctl migrate           -> apply the catalog schema
# Configuration comes only from BACKUP_* environment variables (see the README).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# mysqldump/mysql (MariaDB's client) for the database backup service.
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
# documents) relative to their package files at run time, hence the editable install.
COPY . .
RUN pip install --no-deps -e . \
    && python -m compileall -q libs services

# Where the services read and write; named volumes mounted here start out owned by `backup`.
RUN mkdir -p /data/backups /data/app/uploads /data/app/configs /data/app/logs \
    && chown -R backup:backup /data

ENV BACKUP_GATEWAY_HOST=0.0.0.0 \
    BACKUP_GATEWAY_PORT=8080 \
    BACKUP_STORAGE_DIR=/data/backups \
    BACKUP_UPLOADS_DIR=/data/app/uploads \
    BACKUP_CONFIGS_DIR=/data/app/configs \
    BACKUP_LOGS_DIR=/data/app/logs \
    BACKUP_LOG_FORMAT=json

USER 10001:10001
EXPOSE 8080

# GET /healthz of the gateway; a container running another service sets HEALTHCHECK_URL to its
# own /healthz. Python, as the slim image has no curl; proxies are bypassed on purpose.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.build_opener(r.ProxyHandler({})).open(os.environ.get('HEALTHCHECK_URL') or 'http://127.0.0.1:%s/healthz' % os.environ.get('BACKUP_GATEWAY_PORT', '8080'), timeout=4)"]

CMD ["python", "-m", "backup_gateway"]
