"""The CLI without a gateway: bad input and an unreachable target give a clear message."""

from __future__ import annotations

import socket

from click.testing import CliRunner

from codegen_ray.cli import main


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_gateway_says_how_to_start_one() -> None:
    result = CliRunner().invoke(main, ["tools", "--target", f"127.0.0.1:{closed_port()}"])
    assert result.exit_code == 1
    assert "UNAVAILABLE" in result.output
    assert "codegen-ray serve" in result.output


def test_call_refuses_arguments_that_are_not_a_json_object() -> None:
    runner = CliRunner()
    not_json = runner.invoke(main, ["call", "echo", "--json", "{nope"])
    assert not_json.exit_code == 2 and "not valid JSON" in not_json.output
    not_object = runner.invoke(main, ["call", "echo", "--json", "[1, 2]"])
    assert not_object.exit_code == 2 and "JSON object" in not_object.output


def test_session_create_refuses_malformed_pairs() -> None:
    result = CliRunner().invoke(main, ["session", "create", "--env", "NOEQUALS"])
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.output
