from __future__ import annotations

from tools.openapi import OPENAPI_FILE, render


def test_the_committed_openapi_document_is_the_one_the_gateway_serves() -> None:
    assert OPENAPI_FILE.read_text() == render(), (
        "the gateway's routes and client/openapi.json differ: run `make schemas` and commit the result"
    )
