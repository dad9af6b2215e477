"""Writes client/openapi.json: the gateway's OpenAPI document, which the admin page's API types are
generated from (`npm run gen:api` in client/). `make schemas` runs it; a unit test fails while the
file and the gateway's routes differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from backup_gateway.routes import openapi_document

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "client" / "openapi.json"


def render() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OPENAPI_FILE.write_text(render())
    print(OPENAPI_FILE, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
