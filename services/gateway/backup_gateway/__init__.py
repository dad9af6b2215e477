"""The gateway: the admin REST API under /api/admin/backup/, its auth and audit, the web page."""
