"""The command blocks of docs/tuning.md and docs/evaluation.md run, so the docs cannot drift from the CLI.

- Every ```bash block of a page is run, in order, as one ``bash -euo pipefail`` script in a
  temporary directory holding a copy of ``deploy/config/`` and the test fixtures the page names
  (the pages tell readers to run them from the repository root). The only rewrite is the port:
  8080 becomes a free one, since several test runs share this machine.
- Every other fenced block that shows ``gatehouse …`` commands (synopses with ``[--optional]``
  parts and placeholders, not runnable as written) is checked flag by flag against the
  command's ``--help``: a flag the CLI no longer has fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PAGES = ["docs/tuning.md", "docs/evaluation.md"]
FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```", re.S | re.M)


def blocks(page: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer((ROOT / page).read_text())]


def gatehouse_bin() -> str:
    exe = Path(sys.executable).with_name("gatehouse")
    return str(exe) if exe.exists() else "gatehouse"


def _start(page: str, tmp: Path) -> subprocess.Popen[str]:
    script = "\n".join(body for lang, body in blocks(page) if lang == "bash")
    assert script.strip(), f"{page} has no runnable bash block"
    script = script.replace("8080", str(free_port()))
    shutil.copytree(ROOT / "deploy" / "config", tmp / "deploy" / "config")
    shutil.copytree(ROOT / "tests" / "fixtures", tmp / "tests" / "fixtures")
    bindir = tmp / ".bin"
    bindir.mkdir()
    (bindir / "gatehouse").symlink_to(gatehouse_bin())
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "GATEHOUSE_NO_PROGRESS": "1"}
    for k in ("GATEHOUSE_CONFIG", "GATEHOUSE_URL", "GATEHOUSE_BASE_URL", "GATEHOUSE_API_KEY", "GATEHOUSE_ADMIN_URL", "GATEHOUSE_ADMIN_KEY"):
        env.pop(k, None)
    (tmp / "walkthrough.sh").write_text("set -euo pipefail\nset -x\n" + script)
    return subprocess.Popen(["bash", "walkthrough.sh"], cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def test_bash_blocks_run_as_written(tmp_path):
    """Both pages at once (each in its own directory, gateway and port): half the wall time on 2 cores."""
    procs = {page: _start(page, tmp_path / Path(page).stem) for page in PAGES}
    outs = {}
    try:
        for page, proc in procs.items():
            outs[page], _ = proc.communicate(timeout=900)  # a guard only: ~1 min on an idle 2-core box
    finally:
        for proc in procs.values():  # the gateway each script started in the background, if still there
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for page, proc in procs.items():
        log = tmp_path / Path(page).stem / "gateway.log"
        assert proc.returncode == 0, f"{page}:\n" + outs[page][-6000:] + ("\n--- gateway.log ---\n" + log.read_text()[-3000:] if log.exists() else "")
    # the documented flow gives the full lineage
    tree = outs["docs/tuning.md"][outs["docs/tuning.md"].rindex("lineage model:assistant-sft"):]
    for kind in ("<- dataset:traffic-traffic.jsonl", "<- dataset:assistant-sft", "<- job:sft-assistant-sft", "-> deployment:",
                 "-> eval_report:", "-> job:dpo-assistant-prefs"):
        assert kind in tree, tree
    ev = outs["docs/evaluation.md"]
    assert "qa: n=2" in ev and "summarization: n=2" in ev, ev
    assert "agreement is near chance" in ev and "WARNING: this arbiter agrees with people near chance" in ev, ev
    assert "blocked 0 of 68 prompts" in ev


def _flags_of(cmd: list[str]) -> set[str]:
    """Flags of a gatehouse (sub)command, from its --help."""
    # a guard only: `tune sft --help` imports torch, which took over 60 s on a saturated 2-core box
    out = subprocess.run([gatehouse_bin(), *cmd, "--help"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=600)
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout))


SUBCOMMAND_DEPTH = {"eval": 1, "registry": 1, "feedback": 1, "tune": 1, "serve": 0, "logs": 1, "keys": 1, "config": 1}


@pytest.mark.parametrize("page", PAGES)
def test_synopsis_flags_exist(page):
    cache: dict[tuple[str, ...], set[str]] = {}
    missing = []
    for lang, body in blocks(page):
        if lang == "bash":
            continue
        for cmd in re.findall(r"(?:^|\$ )(gatehouse [^\n]*(?:\\\n[^\n]*)*)", body, re.M):
            words = cmd.replace("\\\n", " ").split()
            group = words[1]
            pos = [w for w in words[2:] if not w.startswith("-") and not w.startswith("[")]
            sub = [group, *pos[: SUBCOMMAND_DEPTH.get(group, 1)]]
            if group == "tune" and pos and pos[0] == "dataset":
                sub = ["tune", "dataset"]
            if group == "registry":  # `gatehouse registry [--registry DIR] CMD`
                cmds = [w for w in words[2:] if w in ("list", "show", "lineage", "register", "deploy", "promote")]
                sub = ["registry", *cmds[:1]]
            key = tuple(sub)
            if key not in cache:
                cache[key] = _flags_of(sub) | (_flags_of(["registry"]) if group == "registry" else set())
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(words)):
                if flag not in cache[key]:
                    missing.append(f"{' '.join(sub)} {flag}")
    assert not missing, f"{page} shows flags the CLI does not have: {sorted(set(missing))}"
