"""Running ``locmoe`` in this process and checking a refusal the way a user sees it: exit code 2, one line on
stderr naming what is wrong, no traceback (an exception escaping ``main`` is one, and fails the test)."""

from __future__ import annotations

from locmoe.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """(exit code, stderr) of ``locmoe ARGV``."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    return code, capsys.readouterr().err.strip()


def assert_refused(code: int, err: str, *names: str) -> None:
    """Exit 2 and one line that names each of ``names`` (a field, a flag, a file)."""
    assert code == 2, f"exit {code}: {err}"
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in err, f"{name!r} not named in: {err}"
