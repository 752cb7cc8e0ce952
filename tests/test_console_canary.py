"""Canary deploys from the console, against a real gateway on loopback.

An editor deploys a registered tiny model as a canary on a route through the console's form
(session cookie + CSRF token), then sets its weight, promotes it and rolls it back; after each
step ``GET /admin/routes`` shows the live weights changed and the audit log holds who did it
with the weights before and after. A viewer sees no form and a forged POST is 403 with the
file untouched. A gateway on its embedded config says it has no file instead of failing.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gatehouse_core.canary import (
    CanaryError,
    canary_names,
    remove_target,
    restore_backup,
    set_canary,
    write_atomic,
)
from gateway.console.store import ConsoleStore
from tests.console_support import ADMIN_KEY, PASSWORD, TENANT_KEY, client, console_gateway, sign_in
from tuning.registry import Registry
from tuning.testing import build_tiny_lm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: Any) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model")


def register(tmp: Path, model_dir: Path, name: str = "assistant-sft") -> Any:
    reg = Registry(tmp / "registry")
    try:
        return reg.register("model", model_dir, name=name)
    finally:
        reg.close()


@pytest.fixture(scope="module")
def env(tiny_model: Path) -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = register(tmp, tiny_model)
        (tmp / "broken").mkdir()
        (tmp / "broken" / "config.json").write_text("{}")  # passes the form's check, fails to load
        broken = register(tmp, tmp / "broken", "broken")
        with console_gateway(tmp, config_file=True, cookie_secure=False) as (url, app):
            yield {"url": url, "app": app, "tmp": tmp, "model": model, "broken": broken, "config": tmp / "gateway.yaml"}


def live(url: str, route: str = "demo") -> dict[str, float]:
    with httpx.Client(timeout=30) as h:
        r = h.get(url + "/admin/routes", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200, r.text
    return {a["target"]: a["weight"] for a in r.json()["routes"][route]}


def post(c: httpx.Client, path: str, **form: Any) -> httpx.Response:
    return c.post("/console" + path, data=form)


def test_editor_deploys_sets_weight_promotes_and_rolls_back(env: dict[str, Any]) -> None:
    url, model = env["url"], env["model"]
    name, variant = canary_names(model.id, model.name, model.content_hash)
    c = client(url)
    csrf = sign_in(c, "editor", PASSWORD)
    page = c.get(f"/console/registry/{model.id}")
    assert page.status_code == 200 and 'id="canary-form"' in page.text and "Deploy as canary" in page.text
    assert live(url) == {"echo-a": 50.0, "echo-b": 50.0}

    r = post(c, "/canary/deploy", csrf=csrf, artifact=model.id, route="demo", weight="20")
    assert r.status_code == 303, r.text
    assert live(url) == {"echo-a": 40.0, "echo-b": 40.0, name: 20.0}
    page = c.get(r.headers["location"])
    assert "the weights below are read back from the live router" in page.text
    assert re.search(rf"<td>{re.escape(name)}</td><td>{re.escape(variant)}</td><td data-weight=\"20.0\">20 %</td>", page.text)
    written = yaml.safe_load(env["config"].read_text())
    canary = next(t for t in written["routes"][0]["targets"] if t["name"] == name)
    assert canary == {"name": name, "provider": "local", "model": "assistant-sft", "path": model.path, "kind": "chat",
                      "weight": 20.0, "variant": variant}
    assert (env["tmp"] / "gateway.yaml.bak").exists()
    assert f'href="/console/registry/{model.id}#canary"' in c.get("/console/garden").text  # the Garden links the canary

    assert post(c, "/canary/weight", csrf=csrf, artifact=model.id, route="demo", weight="50").status_code == 303
    assert live(url) == {"echo-a": 25.0, "echo-b": 25.0, name: 50.0}

    assert post(c, "/canary/weight", csrf=csrf, artifact=model.id, route="demo", promote="1").status_code == 303
    assert live(url) == {name: 100.0}
    with httpx.Client(timeout=60) as h:  # the canary really answers: the tiny model, in process
        reply = h.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {TENANT_KEY}"},
                       json={"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-gatehouse-variant"] == variant

    assert post(c, "/canary/rollback", csrf=csrf, artifact=model.id, route="demo").status_code == 303
    assert live(url) == {"echo-a": 50.0, "echo-b": 50.0}
    assert name not in env["config"].read_text()

    audit = c.get("/console/audit").text
    for act in ("canary-deploy", "canary-weight", "canary-promote", "canary-rollback"):
        assert act in audit
    entries = [e for e in _audit(env) if e.action == "canary-deploy" and e.ok]
    assert entries and entries[0].actor == "editor" and entries[0].role == "editor"
    assert entries[0].before == {"weights": {"echo-a": 50.0, "echo-b": 50.0}}
    assert entries[0].after["weights"] == {"echo-a": 40.0, "echo-b": 40.0, name: 20.0}
    assert entries[0].target == f"demo/{name}" and entries[0].after["model"] == model.id


def _audit(env: dict[str, Any]) -> list[Any]:
    store = ConsoleStore(env["tmp"] / "console.db", 3600)
    try:
        return asyncio.run(store.audit_log(500))
    finally:
        store.close()


def test_bad_weight_and_unknown_route_are_refused_and_change_nothing(env: dict[str, Any]) -> None:
    c = client(env["url"])
    csrf = sign_in(c, "editor", PASSWORD)
    before = env["config"].read_bytes()
    r = post(c, "/canary/deploy", csrf=csrf, artifact=env["model"].id, route="demo", weight="150")
    assert r.status_code == 400 and "from 0 to 100" in r.text
    r = post(c, "/canary/deploy", csrf=csrf, artifact=env["model"].id, route="nope", weight="5")
    assert r.status_code == 400 and "no route &#39;nope&#39;" in r.text
    r = post(c, "/canary/weight", csrf=csrf, artifact=env["model"].id, route="demo", weight="5")
    assert r.status_code == 400 and "deploy it first" in r.text
    r = post(c, "/canary/deploy", csrf=csrf, artifact="model:nothing-here", route="demo", weight="5")
    assert r.status_code == 404
    assert env["config"].read_bytes() == before
    assert live(env["url"]) == {"echo-a": 50.0, "echo-b": 50.0}


def test_a_model_the_gateway_cannot_load_leaves_file_and_traffic_as_they_were(env: dict[str, Any]) -> None:
    c = client(env["url"])
    csrf = sign_in(c, "editor", PASSWORD)
    before = env["config"].read_bytes()
    r = post(c, "/canary/deploy", csrf=csrf, artifact=env["broken"].id, route="demo", weight="10")
    assert r.status_code == 409 and "config file was restored" in r.text
    assert env["config"].read_bytes() == before
    assert live(env["url"]) == {"echo-a": 50.0, "echo-b": 50.0}
    failed = [e for e in _audit(env) if e.action == "canary-deploy" and e.after.get("model") == env["broken"].id]
    assert failed and not failed[0].ok and failed[0].after["reload_error"] and failed[0].after["weights"] == {"echo-a": 50.0, "echo-b": 50.0}


def test_viewer_sees_no_form_and_a_forged_post_is_403(env: dict[str, Any]) -> None:
    c = client(env["url"])
    csrf = sign_in(c, "viewer", PASSWORD)
    page = c.get(f"/console/registry/{env['model'].id}")
    assert page.status_code == 200 and "canary-form" not in page.text and "/console/canary/" not in page.text
    before = env["config"].read_bytes()
    r = post(c, "/canary/deploy", csrf=csrf, artifact=env["model"].id, route="demo", weight="30")
    assert r.status_code == 403 and "may only read" in r.text
    editor = client(env["url"])
    sign_in(editor, "editor", PASSWORD)
    r = post(editor, "/canary/deploy", csrf="forged", artifact=env["model"].id, route="demo", weight="30")
    assert r.status_code == 403 and "CSRF" in r.text
    assert env["config"].read_bytes() == before
    assert live(env["url"]) == {"echo-a": 50.0, "echo-b": 50.0}
    refused = [e for e in _audit(env) if e.action == "canary-deploy" and not e.ok]
    assert any(e.actor == "viewer" and "role viewer" in e.after["refused"] for e in refused)


def test_embedded_config_says_there_is_no_file(tiny_model: Path, tmp_path: Path) -> None:
    model = register(tmp_path, tiny_model)
    with console_gateway(tmp_path, cookie_secure=False) as (url, _app):
        c = client(url)
        csrf = sign_in(c, "editor", PASSWORD)
        page = c.get(f"/console/registry/{model.id}")
        assert 'id="canary-no-file"' in page.text and "gatehouse serve --config" in page.text
        assert "canary-form" not in page.text
        r = post(c, "/canary/deploy", csrf=csrf, artifact=model.id, route="demo", weight="5")
        assert r.status_code == 409 and "embedded config" in r.text


# ---- the shared rewrite (gatehouse_core.canary) ---------------------------------------------

def test_core_rewrite_remove_and_restore(tmp_path: Path) -> None:
    cfg = tmp_path / "g.yaml"
    raw = {"routes": [{"name": "r", "targets": [{"name": "a", "provider": "mock", "model": "echo", "weight": 3},
                                                {"name": "b", "provider": "mock", "model": "echo", "weight": 1}]}]}
    cfg.write_text(yaml.safe_dump(raw))
    new = {"name": "c", "provider": "mock", "model": "echo"}
    assert set_canary(raw, "r", "c", 20, cfg, new) == {"a": 60.0, "b": 20.0, "c": 20.0}
    with pytest.raises(CanaryError, match="deploy it first"):
        set_canary(raw, "r", "zzz", 5, cfg)
    seen: list[dict[str, Any]] = []
    write_atomic(cfg, raw, lambda m, p: seen.append(m))
    assert seen and yaml.safe_load(cfg.read_text()) == raw
    assert remove_target(raw, "r", "c", cfg) == {"a": 75.0, "b": 25.0}
    with pytest.raises(CanaryError, match="would not load"):
        write_atomic(cfg, raw, lambda m, p: (_ for _ in ()).throw(ValueError("bad")))
    restore_backup(cfg)  # the .bak of the one successful write: the original two-target file
    assert [t["name"] for t in yaml.safe_load(cfg.read_text())["routes"][0]["targets"]] == ["a", "b"]
    only = {"routes": [{"name": "r", "targets": [{"name": "x", "provider": "mock", "model": "echo"}]}]}
    with pytest.raises(CanaryError, match="only target"):
        remove_target(only, "r", "x", cfg)
