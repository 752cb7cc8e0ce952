"""``make lint`` is part of the test run: its ruff and mypy commands, read from the Makefile.

Run with the venv's own tools (the ``install`` prerequisite is not run). ruff takes well
under a second. mypy keeps its cache in the checkout's ``.mypy_cache``; measured on the
2-core dev box while other suites loaded it (load average ~10), 2026-12-03: warm 7-9 s
wall; cold (a fresh checkout's first run) 80 s of CPU, 275 s wall.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def lint_commands() -> dict[str, list[str]]:
    """``{tool: argv}`` for each command of the Makefile's ``lint`` target."""
    m = re.search(r"^lint:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert m, "no lint target in the Makefile"
    cmds = [shlex.split(line.strip().replace("$(BIN)/", f"{BIN}/")) for line in m.group(1).splitlines()]
    return {Path(c[0]).name: c for c in cmds}


def run(argv: list[str]) -> None:
    if not Path(argv[0]).exists():
        pytest.fail(f"{argv[0]} is missing: install the dev extras (pip install -e '.[dev]')")
    # the timeout only guards against a hang; it asserts nothing about speed
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{shlex.join(argv)} failed:\n{out.stdout}{out.stderr}"


def test_the_makefile_lints_every_package() -> None:
    cmds = lint_commands()
    assert set(cmds) == {"ruff", "mypy"}
    packages = {"gatehouse_core", "gateway", "policies", "evaluators", "tuning"}
    assert packages | {"tests"} <= set(cmds["ruff"]) and packages <= set(cmds["mypy"])


def test_ruff() -> None:
    run(lint_commands()["ruff"])


@pytest.mark.slow
def test_mypy() -> None:
    run(lint_commands()["mypy"])
