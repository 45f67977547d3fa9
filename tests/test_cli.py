"""The `lathe` command: every subcommand has --help; env reports versions."""

from __future__ import annotations

import pytest

from lathe.cli import build_parser, main


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("cmd", _subcommands())
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: lathe " + cmd in capsys.readouterr().out


def test_core_subcommands_exist():
    assert {"run", "submit", "jobs", "tune", "config", "env"} <= set(_subcommands())


def test_env_reports_versions(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import torch

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"torch" in out and torch.__version__ in out and "ray_cluster" in out


def test_jobs_without_address_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert main(["jobs", "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no cluster address" in err[0]
