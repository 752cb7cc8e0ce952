"""Console pages over real HTTP: live metrics and circuit state in the Model Garden, the
registry's lineage as SVG, reports opened in place, empty states, the console off by
default, and console users managed with ``gatehouse console``."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.console.data import _quantile, layout
from tests.console_support import (
    ADMIN_KEY,
    TENANT_KEY,
    client,
    console_gateway,
    console_settings,
    sign_in,
)
from tests.support import gateway, make_settings

BROKEN = {"name": "broken", "retries": {"attempts": 0},
          "targets": [{"name": "down", "provider": "mock", "model": "error:503", "capabilities": ["chat"], "circuit": {"failures": 1, "reset_seconds": 600}}]}


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with console_gateway(tmp, cookie_secure=False, extra_routes=[BROKEN]) as (url, app):
            yield {"url": url, "app": app, "tmp": tmp}


def admin(env: dict[str, Any]) -> tuple[httpx.Client, str]:
    c = client(env["url"])
    return c, sign_in(c)


def test_garden_shows_live_latency_errors_and_an_open_circuit(env: dict[str, Any]) -> None:
    api = client(env["url"], headers={"authorization": f"Bearer {TENANT_KEY}"})
    for _ in range(3):
        assert api.post("/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    assert api.post("/v1/chat/completions", json={"model": "broken", "messages": [{"role": "user", "content": "hi"}]}).status_code >= 500
    c, _ = admin(env)
    page = c.get("/console/garden").text
    demo = page.split('id="route-')[2]  # routes are sorted: broken, demo, fixed
    assert ">demo<" in demo and " ms</dd>" in demo  # p50/p99 from gatehouse_request_duration_seconds
    broken = page.split('id="route-')[1]
    assert 'class="circuit-open"' in broken and "100.0 %" in broken
    assert 'class="circuit-closed"' in demo


def test_garden_filters_by_capability_with_an_empty_state(env: dict[str, Any]) -> None:
    c, _ = admin(env)
    page = c.get("/console/garden", params={"capability": "moderations"}).text
    assert "No routes with capability “moderations”" in page
    streaming = c.get("/console/garden", params={"capability": "streaming"}).text
    assert "echo-a" in streaming and ">broken<" not in streaming
    assert c.get("/console/garden", params={"capability": "telepathy"}).status_code == 400


def test_registry_lineage_is_drawn_as_svg_and_reports_open_in_place(env: dict[str, Any]) -> None:
    from tuning.registry import (
        Registry,  # tests may use tuning; the console reads its files read-only
    )

    tmp = env["tmp"]
    (tmp / "data.jsonl").write_text('{"q": 1}\n')
    (tmp / "model").mkdir()
    (tmp / "model" / "w.bin").write_bytes(b"weights")
    (tmp / "sxs.html").write_text("<html><body><h1>SxS report</h1></body></html>")
    with Registry(tmp / "registry") as reg:
        ds = reg.register("dataset", tmp / "data.jsonl", name="qa")
        model = reg.register("model", tmp / "model", name="tiny", parents=[ds.id])
        report = reg.register("eval_report", tmp / "sxs.html", name="sxs-tiny", parents=[model.id])
    c, _ = admin(env)
    evals = c.get("/console/evals").text
    assert model.id in evals and report.id in evals
    page = c.get(f"/console/registry/{model.id}").text
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert ds.id[:38] in svg and report.id[:38] in svg and svg.count("<line") == 2
    opened = c.get("/console/evals", params={"artifact_report": report.id}).text
    assert 'id="report-frame"' in opened
    r = c.get("/console/evals/report", params={"artifact": report.id})
    assert r.status_code == 200 and "SxS report" in r.text and r.headers["content-security-policy"].startswith("sandbox")
    assert c.get("/console/registry/model:nope:000").status_code == 404


def test_empty_states_say_what_to_do(env: dict[str, Any]) -> None:
    c, _ = admin(env)
    assert "No requests match these filters" in c.get("/console/traffic", params={"model": "fixed", "action": "redact"}).text
    assert "Nothing recorded yet for config-reload" in c.get("/console/audit", params={"action": "config-reload"}).text
    for path in ("/console/garden", "/console/playground", "/console/sxs", "/console/prompts", "/console/policies",
                 "/console/traffic", "/console/evals", "/console/audit"):
        assert "TODO" not in c.get(path).text, path


def test_the_console_is_off_unless_configured() -> None:
    with gateway(make_settings([{"name": "m", "targets": [{"provider": "mock", "model": "echo"}]}])) as (url, _):
        r = httpx.get(url + "/console/login")
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


def test_console_users_from_the_cli_can_sign_in(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import console as cli

    cfg = env["tmp"] / "gatehouse.yaml"
    cfg.write_text(f"auth:\n  store: sqlite\n  sqlite_path: {env['tmp'] / 'keys.db'}\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pass\n"))
    assert cli.main(["add-user", "carol", "--role", "editor", "--password-stdin", "--config", str(cfg)]) == 0
    c = client(env["url"])
    sign_in(c, "carol", "s3cret-pass")
    assert "carol · editor" in c.get("/console/garden").text
    assert cli.main(["remove-user", "carol", "--config", str(cfg)]) == 0
    bad = client(env["url"])
    with pytest.raises(AssertionError):
        sign_in(bad, "carol", "s3cret-pass")


def test_config_users_sign_in_with_their_scrypt_hash(tmp_path: Path) -> None:
    from gateway.console.store import hash_password

    users = [{"name": "dana", "role": "viewer", "tenant": "acme", "password_hash": hash_password("pw-dana")}]
    settings = console_settings(tmp_path, cookie_secure=False, auth={"store": "config"},
                                console={"enabled": True, "cookie_secure": False, "db_path": str(tmp_path / "c.db"), "users": users})
    with gateway(settings) as (url, _):
        c = client(url)
        sign_in(c, "dana", "pw-dana")
        assert "tenant acme" in c.get("/console/garden").text


def test_histogram_quantile_and_layout() -> None:
    # 10 observations: 5 at <= 0.1 s, 4 more at <= 0.5 s, 1 at <= 1 s
    buckets = [(0.1, 5.0), (0.5, 9.0), (1.0, 10.0), (float("inf"), 10.0)]
    assert _quantile(buckets, 0.5) == pytest.approx(0.1)
    assert _quantile(buckets, 0.9) == pytest.approx(0.5)
    assert _quantile(buckets, 0.99) == pytest.approx(0.95)
    assert _quantile([], 0.5) is None
    g = layout([("a", "b"), ("b", "c"), ("a", "c")], "b", {})
    xs = {n.id: n.x for n in g.nodes}
    assert xs["a"] < xs["b"] < xs["c"] and len(g.edges) == 3


def test_playground_shows_grounding_passages_with_scores(tmp_path: Path) -> None:
    """A route pinned to a grounding index: the run's last event carries the passages and scores."""
    import json

    from evaluators.embedding import shared_embedder
    from gateway.grounding.builder import build_index
    from gateway.grounding.text import iter_documents

    docs = Path(__file__).parent / "fixtures" / "grounding_docs"
    build_index(iter_documents([docs]), tmp_path / "idx", shared_embedder(), index_type="auto", max_chars=300, progress=False)
    grounded = {"name": "grounded", "grounding": {"index": "docs", "top_k": 2},
                "targets": [{"name": "g-echo", "provider": "mock", "model": "echo"}]}
    settings = console_settings(tmp_path, cookie_secure=False, extra_routes=[grounded],
                                grounding={"indexes": {"docs": str(tmp_path / "idx")}})
    with gateway(settings) as (url, _):
        c = client(url)
        csrf = sign_in(c)
        with c.stream("POST", "/console/playground/run", data={"csrf": csrf, "route": "grounded", "message": "Why do we get spring tides?"}) as r:
            events = [json.loads(line) for line in r.iter_lines() if line.strip()]
    done = events[-1]
    assert done["type"] == "done" and done["status"] == 200
    chunks = done["grounding"]["chunks"]
    assert chunks[0]["id"].startswith("tides.txt#") and 0 < chunks[0]["score"] <= 1
    assert done["grounding_chunk_ids"] == [ch["id"] for ch in chunks]


def _events(c: httpx.Client, path: str, form: dict[str, str]) -> list[dict[str, Any]]:
    import json

    with c.stream("POST", path, data=form) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


def test_side_by_side_of_two_prompt_versions(env: dict[str, Any]) -> None:
    c, csrf = admin(env)
    api = client(env["url"], headers={"authorization": f"Bearer {ADMIN_KEY}"})
    for tone in ("short", "long"):
        r = api.post("/admin/prompts", json={"id": "sxs-p", "messages": [{"role": "system", "template": f"Be {tone}."}]})
        assert r.status_code in (200, 201), r.text
    events = _events(c, "/console/sxs/run", {"csrf": csrf, "route_a": "demo", "route_b": "demo", "prompt_id": "sxs-p",
                                             "ref_a": "v1", "ref_b": "v2", "message": "compare me"})
    done = {e["side"]: e for e in events if e["type"] == "done"}
    assert (done["a"]["prompt_id"], done["a"]["prompt_version"]) == ("sxs-p", "1")
    assert (done["b"]["prompt_id"], done["b"]["prompt_version"]) == ("sxs-p", "2")
    same = c.post("/console/sxs/run", data={"csrf": csrf, "route_a": "demo", "route_b": "demo", "message": "x"})
    assert same.status_code == 400 and "Both sides are the same" in same.text


def test_traffic_filters(env: dict[str, Any]) -> None:
    c, csrf = admin(env)
    for text in ("a refund please", "plain question"):
        events = _events(c, "/console/playground/run", {"csrf": csrf, "route": "fixed", "message": text})
        assert events[-1]["type"] == "done"
    flagged = c.get("/console/traffic", params={"model": "fixed", "action": "flag", "category": "\\brefund\\b", "since": "60"}).text
    assert flagged.count('class="record-link"') == 1
    assert c.get("/console/traffic", params={"model": "fixed", "status": "2xx"}).text.count('class="record-link"') >= 2
    assert c.get("/console/traffic", params={"model": "fixed", "status": "5xx"}).text.count('class="record-link"') == 0
    assert c.get("/console/traffic", params={"variant": "B", "model": "fixed"}).text.count('class="record-link"') == 0
    assert c.get("/console/traffic", params={"status": "abc"}).status_code == 400
    assert c.get("/console/traffic", params={"since": "-5"}).status_code == 400


def test_effective_rules_for_a_key_and_a_failed_policy_reload(env: dict[str, Any]) -> None:
    c, csrf = admin(env)
    page = c.get("/console/policies", params={"key": "acme-key", "model": "demo"}).text
    assert 'value="acme"' in page and "block-forbidden" in page
    policy = env["tmp"] / "policies" / "p.yaml"
    good = policy.read_text()
    try:
        policy.write_text(good.replace("action: flag", "action: explode"))
        assert c.post("/console/policies/reload", data={"csrf": csrf}).status_code == 303
        page = c.get("/console/policies").text
        assert "The last reload failed" in page and "console-test@1" in page
        assert "policy-reload" in c.get("/console/audit", params={"action": "policy-reload"}).text
    finally:
        policy.write_text(good)
    assert c.post("/console/policies/reload", data={"csrf": csrf}).status_code == 303
    assert "Last reload: no error." in c.get("/console/policies").text
