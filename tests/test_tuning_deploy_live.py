"""Deploy and promote against a real gateway on loopback: every path ends with the live weights changed.

File watching, SIGHUP and ``POST /admin/reload`` share one ``ConfigReloader``; a promote reads the
live weights back through ``GET /admin/routes`` or fails.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.cli.registry import main as registry_main
from gateway.config import check_raw_config
from gateway.reloader import ConfigReloader
from tests.support import API_KEY, serve_app
from tuning.deploy import DeployError, promote
from tuning.registry import Registry
from tuning.testing import build_tiny_lm

pytestmark = pytest.mark.slow
ADMIN = "admin-secret-for-tests"


def live(url: str) -> dict[str, float]:
    r = httpx.get(url + "/admin/routes", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert r.status_code == 200, r.text
    return {a["target"]: a["weight"] for a in r.json()["routes"]["assistant"]}


async def until(pred, limit=30.0):
    async with asyncio.timeout(limit):
        while not pred():
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model")


def setup_gateway(tmp_path: Path, tiny_model: Path):
    from gateway.app import create_app
    from gateway.config import load_settings

    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({
        "auth": {"keys": [{"id": "k1", "tenant": "acme", "key": API_KEY}]},
        "admin": {"key": ADMIN},
        "routes": [{"name": "assistant", "targets": [{"name": "current", "provider": "mock", "model": "echo"}]}],
        "safety": {"backend": "none"},
        "registry": {"path": str(tmp_path / "registry")},
    }))
    reg = Registry(tmp_path / "registry")
    model = reg.register("model", tiny_model, name="assistant-sft")
    return cfg, reg, model, create_app(load_settings(cfg), config_path=cfg)


def served_variants(url: str, n: int) -> set[str]:
    out = set()
    for i in range(n):
        r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60,
                       json={"model": "assistant", "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 2,
                             "user": f"u{i}"})
        assert r.status_code == 200, r.text
        out.add(r.headers["x-gatehouse-variant"])
    return out


def cli(*args: str) -> int:
    return registry_main(list(args))


async def test_deploy_with_admin_url_then_file_only_promote_is_picked_up(tmp_path, tiny_model, capsys):
    """The reported bug: after `deploy --admin-url`, later file changes were no longer picked up."""
    cfg, reg, model, app = setup_gateway(tmp_path, tiny_model)
    with serve_app(app) as srv:
        assert cli("--registry", str(reg.root), "deploy", model.id, "--route", "assistant", "--weight", "50",
                   "--config", str(cfg), "--admin-url", srv.url, "--admin-key", ADMIN) == 0
        out = capsys.readouterr().out
        assert "live weights verified" in out
        canary = next(k for k in live(srv.url) if k.startswith("canary-"))
        assert live(srv.url) == {"current": 50.0, canary: 50.0}
        # a promote that only rewrites the file: the file watch must still pick it up
        promote(model.id, "assistant", 100, cfg, registry=reg, check_config=check_raw_config, report_path=None, force=True, verify=False)
        await until(lambda: live(srv.url) == {canary: 100.0})
        assert served_variants(srv.url, 4) == {f"canary-{model.id}"}
    reg.close()


async def test_deploy_without_admin_url_then_verified_promote(tmp_path, tiny_model, capsys):
    cfg, reg, model, app = setup_gateway(tmp_path, tiny_model)
    with serve_app(app) as srv:
        env = os.environ.pop("GATEHOUSE_ADMIN_URL", None)
        try:
            assert cli("--registry", str(reg.root), "deploy", model.id, "--route", "assistant", "--weight", "50", "--config", str(cfg)) == 0
        finally:
            if env is not None:
                os.environ["GATEHOUSE_ADMIN_URL"] = env
        assert "not verified" in capsys.readouterr().out
        await until(lambda: len(live(srv.url)) == 2)  # the file watch took the deploy
        report = tmp_path / "sxs.json"
        report.write_text(json.dumps({"summary": {"win_rate_a_ties_half": {"value": 0.8, "ci95": [0.7, 0.9]}}}))
        # promote without a way to verify is refused before anything is written
        before = cfg.read_text()
        assert cli("--registry", str(reg.root), "promote", model.id, "--route", "assistant", "--weight", "100",
                   "--config", str(cfg), "--report", str(report), "--admin-url", "") == 1
        assert "--admin-url" in capsys.readouterr().err and cfg.read_text() == before
        assert cli("--registry", str(reg.root), "promote", model.id, "--route", "assistant", "--weight", "100",
                   "--config", str(cfg), "--report", str(report), "--admin-url", srv.url, "--admin-key", ADMIN) == 0
        out = capsys.readouterr().out
        assert "live weights verified" in out and "=100" in out
        assert served_variants(srv.url, 4) == {f"canary-{model.id}"}
    reg.close()


async def test_promote_fails_when_the_gateway_serves_another_file(tmp_path, tiny_model):
    """A gateway started from a different config never shows the written weights: the promote fails."""
    cfg, reg, model, app = setup_gateway(tmp_path, tiny_model)
    other = tmp_path / "other.yaml"
    other.write_text(cfg.read_text())
    from tuning.deploy import deploy

    with serve_app(app) as srv:
        deploy(model.id, "assistant", 50, other, registry=reg, check_config=check_raw_config)
        with pytest.raises(DeployError, match="did not take the change"):
            promote(model.id, "assistant", 100, other, registry=reg, check_config=check_raw_config, report_path=None, force=True, admin_url=srv.url, admin_key=ADMIN)
    reg.close()


async def test_a_write_during_a_slow_reload_is_not_swallowed(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("a: 1\n")
    seen: list[str] = []

    async def apply(reason: str) -> dict:
        seen.append(cfg.read_text())
        if len(seen) == 1:  # the file changes while this reload is still running
            tmp = tmp_path / "c.tmp"
            tmp.write_text("a: 2\n")
            os.replace(tmp, cfg)
        return {"reloaded": True}

    r = ConfigReloader(cfg, apply)
    await r.reload("admin")
    assert r.changed()  # the next poll reloads again
    await r.reload("file changed")
    assert seen == ["a: 1\n", "a: 2\n"] and not r.changed()


async def test_a_failing_reload_keeps_the_watcher_alive(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("a: 1\n")
    calls = []

    async def apply(reason: str) -> dict:
        calls.append(reason)
        raise RuntimeError("model failed to load")

    r = ConfigReloader(cfg, apply, poll_seconds=0.01)
    task = asyncio.create_task(r.watch())
    cfg.write_text("a: 22\n")
    await until(lambda: len(calls) == 1)
    cfg.write_text("a: 333\n")
    await until(lambda: len(calls) == 2)
    assert not task.done()
    task.cancel()
    res = await r.reload("admin")
    assert res["reloaded"] is False and "model failed to load" in res["reason"]
