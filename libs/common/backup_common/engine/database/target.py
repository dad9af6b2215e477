"""Where a MySQL/MariaDB database is: the parts of a ``mysql://`` URL a connection needs."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit


class MysqlTarget:
    """The parts of a ``mysql://user:password@host:port/database`` URL that a connection needs."""

    __slots__ = ("database", "host", "password", "port", "user")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb"):
            raise ValueError("must be a mysql://user:password@host:port/database URL")
        database = parts.path.lstrip("/")
        if not database or "/" in database:
            raise ValueError("must name exactly one database, as in mysql://root@127.0.0.1:3306/name")
        try:
            port = parts.port
        except ValueError:
            # Never echo the bad value: without '@host' it is the password.
            raise ValueError("has an invalid host or port; expected mysql://user:password@host:port/database") from None
        self.host: str = parts.hostname or "127.0.0.1"
        self.port: int = port or 3306
        self.user: str = unquote(parts.username or "root")
        self.password: str = unquote(parts.password or "")
        self.database: str = unquote(database)

    def __repr__(self) -> str:
        return f"MysqlTarget({self.user}@{self.host}:{self.port}/{self.database})"
