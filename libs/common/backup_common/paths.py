"""Where the repository's own data files (migrations, schemas, default documents) live."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
INFRA_DIR = REPO_ROOT / "infra"
MIGRATIONS_DIR = INFRA_DIR / "mysql"
SCHEMAS_DIR = INFRA_DIR / "schemas"
CONFIG_DIR = INFRA_DIR / "config"
