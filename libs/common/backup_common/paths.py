"""Where the repository's own data files (migrations, schemas, default documents, the built admin
page) live: in the checkout the packages are installed from (editable, as `make setup` and the image do)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
INFRA_DIR = REPO_ROOT / "infra"
MIGRATIONS_DIR = INFRA_DIR / "mysql"
SCHEMAS_DIR = INFRA_DIR / "schemas"
CONFIG_DIR = INFRA_DIR / "config"
# `npm run build` in client/ (run by `make setup`) exports the admin page here.
ADMIN_PAGE_DIR = REPO_ROOT / "client" / "out"
