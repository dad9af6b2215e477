"""`backupctl`'s gateway commands before and around the HTTP calls: where the gateway is, the token,
the arguments, the exit statuses of what is refused before anything is asked, and the wait."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import jwt
import pytest

from backup_common.adapters.settings import Settings
from backup_common.adapters.tokens import TokenVerifier
from backup_common.cli import build_parser, main
from backup_common.cli.api_client import ApiClient, ApiSetupError, ApiTarget, ApiUnavailable, follow, resolve_api
from backup_common.cli.progress import PlainDisplay

SECRET = "s" * 48


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No BACKUP_* variable from the outer shell, and a working directory without var/secrets."""
    for name in list(os.environ):
        if name.upper().startswith("BACKUP_"):
            monkeypatch.delenv(name)
    for name in ("BACKUP_JWT_SECRET", "BACKUP_MASTER_KEY_FILE"):  # the CLI may set them from local files
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_gateway_is_found_from_the_option_then_backup_api_url_then_its_own_host_and_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKUP_JWT_SECRET", SECRET)
    monkeypatch.setenv("BACKUP_GATEWAY_HOST", "10.0.0.5")
    monkeypatch.setenv("BACKUP_GATEWAY_PORT", "9000")
    assert resolve_api(None).url == "http://10.0.0.5:9000"
    assert "BACKUP_API_URL unset" in resolve_api(None).url_from

    monkeypatch.setenv("BACKUP_API_URL", "https://backups.example.com/ ")
    assert (resolve_api(None).url, resolve_api(None).url_from) == ("https://backups.example.com", "BACKUP_API_URL")

    assert resolve_api("http://127.0.0.1:8080/").url == "http://127.0.0.1:8080"


def test_backup_api_token_is_used_as_it_is_without_any_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_API_TOKEN", "opaque.token.value")
    monkeypatch.setenv("BACKUP_API_URL", "http://gateway:8080")

    target = resolve_api(None)

    assert (target.token, target.token_from) == ("opaque.token.value", "token from BACKUP_API_TOKEN")


def test_without_a_token_one_is_signed_with_the_configured_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_JWT_SECRET", SECRET)

    target = resolve_api(None)

    assert TokenVerifier(Settings(jwt_secret=SECRET)).verify(target.token).is_admin
    assert jwt.decode(target.token, SECRET, algorithms=["HS256"])["sub"].count("@") == 1
    assert target.token_from == "token signed with BACKUP_JWT_SECRET"


def test_without_a_token_or_a_secret_the_command_stops_naming_both_variables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ApiSetupError, match=r"set BACKUP_API_TOKEN.*BACKUP_JWT_SECRET"):
        resolve_api(None)

    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("backupctl list: no token for the gateway: set BACKUP_API_TOKEN")


@pytest.mark.parametrize("url", ["ftp://gateway/", "gateway:8080", "http://"])
def test_an_api_url_that_is_not_http_is_refused_naming_the_variable_not_repeating_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    monkeypatch.setenv("BACKUP_API_TOKEN", "t")
    monkeypatch.setenv("BACKUP_API_URL", url)

    assert main(["show", "b1"]) == 2

    err = capsys.readouterr().err
    assert err == "backupctl show: BACKUP_API_URL: must be an http:// or https:// URL, such as http://127.0.0.1:8080\n"


def test_gateway_is_an_alias_of_api_url_for_every_gateway_command() -> None:
    parser = build_parser()
    for argv in (["backup", "--type", "full"], ["list"], ["show", "b"], ["verify", "b"], ["restore", "b"]):
        assert parser.parse_args([*argv, "--gateway", "http://g:1"]).api_url == "http://g:1"
        assert parser.parse_args([*argv, "--api-url", "http://g:2"]).api_url == "http://g:2"


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["backup"], "--type"),
        (["backup", "--type", "everything"], "invalid choice: 'everything'"),
        (["list", "--limit", "0"], "must be from 1 to 500"),
        (["list", "--status", "lost"], "invalid choice: 'lost'"),
        (["show"], "backup"),
        (["verify", "b", "--wait", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_usage_errors_exit_2_before_anything_is_asked(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)

    assert stopped.value.code == 2
    assert complaint in capsys.readouterr().err


def test_the_list_asks_for_what_the_options_say() -> None:
    args = build_parser().parse_args(
        ["list", "--type", "full", "incremental", "--status", "failed", "--limit", "5", "--offset", "10", "--json"]
    )
    assert (args.type, args.status, args.limit, args.offset, args.json) == (
        ["full", "incremental"],
        ["failed"],
        5,
        10,
        True,
    )


def test_an_unreachable_gateway_is_one_line_naming_where_its_address_came_from(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKUP_API_TOKEN", "t")
    monkeypatch.setenv("BACKUP_API_URL", "http://127.0.0.1:1")

    assert main(["backup", "--type", "database", "--wait"]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "backupctl backup: cannot reach the gateway at http://127.0.0.1:1 (BACKUP_API_URL): Connection refused\n"
    )


class Answers(ApiClient):
    """An ApiClient whose GETs answer from a list: a record, or an ApiUnavailable to raise."""

    def __init__(self, answers: list[dict[str, Any] | ApiUnavailable]) -> None:
        super().__init__(ApiTarget("http://gateway", "BACKUP_API_URL", "t", "token from BACKUP_API_TOKEN"))
        self.answers = answers
        self.asked: list[str] = []

    async def get(self, path: str, params: Any = None) -> dict[str, Any]:
        self.asked.append(path)
        answer = self.answers.pop(0)
        if isinstance(answer, ApiUnavailable):
            raise answer
        return {"backup": answer}


async def test_the_wait_keeps_asking_while_the_gateway_does_not_answer_and_says_so_once() -> None:
    client = Answers(
        [
            {"status": "running"},
            ApiUnavailable("cannot reach the gateway at http://gateway (BACKUP_API_URL): Connection refused"),
            ApiUnavailable("cannot reach the gateway at http://gateway (BACKUP_API_URL): Connection refused"),
            {"status": "completed"},
        ]
    )
    log = io.StringIO()
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    final = await follow(
        client,
        "/b1",
        "backup",
        {"status": "pending"},
        finished=lambda record: record["status"] == "completed",
        show=lambda display, record: display.show("b", f"backup: {record['status']}", phase=record["status"]),
        display=PlainDisplay(log),
        poll_seconds=0.5,
        sleep=pause,
    )

    assert final == {"status": "completed"}
    assert client.asked == ["/b1"] * 4
    assert pauses == [0.5] * 4
    assert log.getvalue().splitlines() == [
        "backup: pending",
        "backup: running",
        "cannot reach the gateway at http://gateway (BACKUP_API_URL): Connection refused; asking again",
        "backup: completed",
    ]
