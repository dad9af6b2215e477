"""What `backupctl` finds on the machine it runs on: the git-ignored secrets `make run` creates for a
first local try, and who runs the command."""

from __future__ import annotations

import base64
import getpass
import os
import secrets
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from backup_common.adapters.settings import ENV_PREFIX

LOCAL_SECRETS = Path("var/secrets")


@dataclass(frozen=True)
class LocalSecret:
    path: Path
    created: bool  # by this call: nobody else can know the secret yet


def local_secret(name: str, make: str, *, create: bool = True) -> LocalSecret | None:
    """A random secret kept in a git-ignored file, so local restarts keep accepting old tokens."""
    path = LOCAL_SECRETS / name
    if path.exists():
        return LocalSecret(path, created=False)
    if not create:
        return None
    LOCAL_SECRETS.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(make + "\n")
    return LocalSecret(path, created=True)


@dataclass
class LocalSecrets:
    notes: list[str] = field(default_factory=list)
    made_jwt_secret: bool = False  # the JWT secret is one this call generated (not the operator's)


def use_local_secrets(env: MutableMapping[str, str], *, create: bool) -> LocalSecrets:
    """Fills in the JWT secret, the master key and the webhooks' signing secret from git-ignored local
    files when they are unset.

    For a first local try only: `run` creates the files; other commands reuse them if present.
    """
    used = LocalSecrets()
    algorithm = env.get(f"{ENV_PREFIX}JWT_ALGORITHM", "HS256")
    if algorithm.startswith("HS") and not env.get(f"{ENV_PREFIX}JWT_SECRET"):
        secret = local_secret("jwt-secret", secrets.token_urlsafe(48), create=create)
        if secret is not None:
            env[f"{ENV_PREFIX}JWT_SECRET"] = secret.path.read_text().strip()
            used.notes.append(f"{ENV_PREFIX}JWT_SECRET is not set: using the local one in {secret.path}")
            used.made_jwt_secret = secret.created
    if not env.get(f"{ENV_PREFIX}MASTER_KEY") and not env.get(f"{ENV_PREFIX}MASTER_KEY_FILE"):
        key = local_secret("master.key", base64.b64encode(secrets.token_bytes(32)).decode(), create=create)
        if key is not None:
            env[f"{ENV_PREFIX}MASTER_KEY_FILE"] = str(key.path.resolve())
            used.notes.append(f"{ENV_PREFIX}MASTER_KEY is not set: using the local one in {key.path} (back it up!)")
    if not env.get(f"{ENV_PREFIX}NOTIFICATION_SECRET"):
        signing = local_secret("notification-secret", secrets.token_urlsafe(48), create=create)
        if signing is not None:
            env[f"{ENV_PREFIX}NOTIFICATION_SECRET"] = signing.path.read_text().strip()
            used.notes.append(
                f"{ENV_PREFIX}NOTIFICATION_SECRET is not set: webhooks are signed with the local one in {signing.path}"
            )
    return used


def operator() -> str:
    """Who runs this command, as tokens and the audit log name them."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid-{os.getuid()}"
    return f"{user}@{socket.gethostname()}"
