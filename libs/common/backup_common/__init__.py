"""The library of the backup services, in three layers whose imports point down only: ``domain``
(pure), ``engine`` (storage, archives, dumps, trees; works from storage and the master key alone) and
``adapters`` (MySQL, RabbitMQ, the aiohttp runtime, settings); ``cli`` (backupctl) sits on top."""

__version__ = "0.1.0"
