"""The catalog on MySQL/MariaDB (unit of work, repositories, leases, outbox, keys) and the source database."""
