"""Off-site copies of backups in an S3-compatible object store (AWS S3, MinIO, …)."""
