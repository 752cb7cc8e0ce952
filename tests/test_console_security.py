"""Security review of the console, over real HTTP against a real gateway.

XSS payloads in prompts, traffic bodies, policy text and model names render escaped;
state-changing forms need the session's CSRF token and a same-origin Origin; a
sign-in always issues a new session id (no fixation) and sign-out ends it server
side; a viewer scoped to a tenant cannot read another tenant's records; the audit log
refuses updates and deletes; forms are size-limited; redirects stay in the console.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console_support import (
    ADMIN_KEY,
    LOGIN_RE,
    OTHER_KEY,
    PASSWORD,
    POLICY,
    TENANT_KEY,
    client,
    console_gateway,
    sign_in,
)

XSS = "<script>alert('xss')</script>"
IMG = '<img src=x onerror="alert(1)">'
EVIL_ROUTE = '<img src=x onerror=alert("route")>'
EVIL_POLICY = POLICY.replace("description: blocks a marker word and secrets, redacts emails",
                             f"description: \"{XSS} policy\"\nowner_note_unused: 1").replace("owner_note_unused: 1\n", "")


def _raw_absent(text: str) -> None:
    for payload in (XSS, IMG, EVIL_ROUTE, "<script>", "<img"):
        assert payload not in text, f"unescaped {payload!r} in page"


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        evil = {"name": EVIL_ROUTE, "targets": [{"name": "evil-target", "provider": "mock", "model": "echo", "variant": IMG}]}
        with console_gateway(tmp, cookie_secure=False, extra_routes=[evil], policy=EVIL_POLICY) as (url, app):
            api = httpx.Client(base_url=url, timeout=30)
            ids = {}
            for name, key in (("acme", TENANT_KEY), ("globex", OTHER_KEY)):
                r = api.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                             json={"model": "demo", "messages": [{"role": "user", "content": f"{XSS} from {name}"}]})
                assert r.status_code == 200, r.text
                ids[name] = r.headers["x-request-id"]
            r = api.post("/v1/chat/completions", headers={"authorization": f"Bearer {TENANT_KEY}"},
                         json={"model": EVIL_ROUTE, "messages": [{"role": "user", "content": IMG}]})
            assert r.status_code == 200, r.text
            r = api.post("/admin/prompts", headers={"authorization": f"Bearer {ADMIN_KEY}"},
                         json={"id": "xss-prompt", "note": XSS, "author": IMG,
                               "messages": [{"role": "system", "template": f"Say {XSS} to {{{{ who }}}}"}],
                               "variables": {"who": {"description": IMG}}})
            assert r.status_code == 201, r.text
            yield {"url": url, "app": app, "ids": ids, "tmp": tmp, "api": api}
            api.close()


def signed_in(env: dict[str, Any], user: str = "", password: str = ADMIN_KEY) -> tuple[httpx.Client, str]:
    c = client(env["url"])
    return c, sign_in(c, user, password)


def wait_visible(c: httpx.Client, path: str) -> httpx.Response:
    """Records reach the console when the request's end is logged, just after the reply."""
    deadline = time.monotonic() + 10
    while True:
        r = c.get(path)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


# ---- XSS --------------------------------------------------------------------------------

def test_prompt_text_renders_escaped(env: dict[str, Any]) -> None:
    c, _ = signed_in(env)
    for path in ("/console/prompts", "/console/prompts/xss-prompt", "/console/playground?prompt=xss-prompt&route=demo",
                 "/console/sxs?prompt=xss-prompt"):
        r = c.get(path)
        assert r.status_code == 200, path
        _raw_absent(r.text)
    assert "&lt;script&gt;" in c.get("/console/prompts/xss-prompt").text


def test_traffic_bodies_and_model_names_render_escaped(env: dict[str, Any]) -> None:
    c, _ = signed_in(env)
    r = wait_visible(c, f"/console/traffic/{env['ids']['acme']}")
    assert r.status_code == 200
    assert "from acme" in r.text  # the body is shown (log_bodies is on) ...
    _raw_absent(r.text)  # ... escaped
    for path in ("/console/traffic", "/console/garden", "/console/playground", "/console/sxs", "/console/policies"):
        page = c.get(path)
        assert page.status_code == 200, path
        _raw_absent(page.text)
    assert "&lt;img src=x onerror=alert(&#34;route&#34;)&gt;" in c.get("/console/garden").text


def test_policy_text_and_query_parameters_render_escaped(env: dict[str, Any]) -> None:
    c, csrf = signed_in(env)
    r = c.get("/console/policies", params={"tenant": XSS, "model": EVIL_ROUTE})
    assert r.status_code == 200
    _raw_absent(r.text)
    r = c.get("/console/policies", params={"key": XSS})  # an unknown key id is echoed in the error
    assert r.status_code == 404
    _raw_absent(r.text)
    r = c.post("/console/policies/dry-run", data={"csrf": csrf, "text": f"{XSS} forbidden"})
    assert r.status_code == 200 and "block-forbidden" in r.text
    _raw_absent(r.text)
    for path in (f"/console/traffic/{XSS}", f"/console/{XSS}", f"/console/prompts/{IMG}"):
        r = c.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), path
        _raw_absent(r.text)


def test_pages_carry_a_strict_content_security_policy(env: dict[str, Any]) -> None:
    c, _ = signed_in(env)
    r = c.get("/console/garden")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"


# ---- sessions ---------------------------------------------------------------------------

def test_every_page_needs_a_session(env: dict[str, Any]) -> None:
    c = client(env["url"])
    for path in ("/console/garden", "/console/traffic", f"/console/traffic/{env['ids']['acme']}", "/console/audit",
                 "/console/prompts/xss-prompt", "/console/evals/report?name=x.html"):
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login"), path
    r = c.post("/console/prompts/push", data={"document": "id: x"})
    assert r.status_code == 401
    assert c.get("/console/static/console.css").status_code == 200  # assets are public


def test_session_cookie_flags(env: dict[str, Any]) -> None:
    c = client(env["url"])
    page = c.get("/console/login")
    token = LOGIN_RE.search(page.text).group(1)  # type: ignore[union-attr]
    r = c.post("/console/login", data={"login_csrf": token, "user": "", "password": ADMIN_KEY})
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("gatehouse_console="))
    low = cookie.lower()
    assert "httponly" in low and "samesite=strict" in low and "max-age=28800" in low and "path=/console" in low


def _login(url: str, user: str, password: str, cookie: str = "") -> str:
    """Sign in with an explicit Cookie header; returns the session id the console set."""
    with httpx.Client(base_url=url, timeout=30) as c:
        page = c.get("/console/login")
        token = LOGIN_RE.search(page.text).group(1)  # type: ignore[union-attr]
        cookies = f"gatehouse_console_login={token}" + (f"; gatehouse_console={cookie}" if cookie else "")
        c.cookies.clear()
        r = c.post("/console/login", data={"login_csrf": token, "user": user, "password": password},
                   headers={"cookie": cookies})
    assert r.status_code == 303, r.text
    return next(v.split(";")[0].split("=", 1)[1] for k, v in r.headers.multi_items()
                if k == "set-cookie" and v.startswith("gatehouse_console="))


def _page_with(url: str, sid: str) -> int:
    with httpx.Client(base_url=url, timeout=30) as c:
        return c.get("/console/garden", headers={"cookie": f"gatehouse_console={sid}"}).status_code


def test_sign_in_issues_a_new_session_id(env: dict[str, Any]) -> None:
    url = env["url"]
    planted = "attacker-chosen-session-id-0123456789abcdef"
    issued = _login(url, "", ADMIN_KEY, cookie=planted)
    assert issued != planted
    assert _page_with(url, planted) == 303  # the planted id grants nothing
    assert _page_with(url, issued) == 200
    # signing in again (another role) from a live session: a new id, and the old one ends
    second = _login(url, "viewer", PASSWORD, cookie=issued)
    assert second != issued
    assert _page_with(url, issued) == 303
    assert _page_with(url, second) == 200


def test_sign_out_ends_the_session_on_the_server(env: dict[str, Any]) -> None:
    c, csrf = signed_in(env)
    sid = c.cookies.get("gatehouse_console")
    assert c.post("/console/logout", data={"csrf": csrf}).status_code == 303
    replay = client(env["url"])
    replay.cookies.set("gatehouse_console", sid, path="/console")
    assert replay.get("/console/garden").status_code == 303


def test_wrong_credentials_are_refused_and_audited(env: dict[str, Any]) -> None:
    c = client(env["url"])
    page = c.get("/console/login")
    token = LOGIN_RE.search(page.text).group(1)  # type: ignore[union-attr]
    r = c.post("/console/login", data={"login_csrf": token, "user": "editor", "password": "guess"})
    assert r.status_code == 401 and "gatehouse_console=" not in r.headers.get("set-cookie", "")
    a, _ = signed_in(env)
    assert "wrong credentials" in a.get("/console/audit?action=sign-in").text


def test_redirect_after_sign_in_stays_in_the_console(env: dict[str, Any]) -> None:
    c = client(env["url"])
    page = c.get("/console/login")
    token = LOGIN_RE.search(page.text).group(1)  # type: ignore[union-attr]
    r = c.post("/console/login", data={"login_csrf": token, "user": "", "password": ADMIN_KEY, "next": "//evil.example/x"})
    assert r.headers["location"] == "/console/garden"


# ---- CSRF -------------------------------------------------------------------------------

def test_state_changing_forms_need_the_csrf_token(env: dict[str, Any]) -> None:
    c, csrf = signed_in(env)
    other, other_csrf = signed_in(env, "editor", PASSWORD)
    action = "/console/prompts/xss-prompt/label"
    form = {"label": "production", "version": "1"}
    assert c.post(action, data=form).status_code == 403
    assert c.post(action, data={**form, "csrf": "forged"}).status_code == 403
    assert c.post(action, data={**form, "csrf": other_csrf}).status_code == 403  # another session's token
    r = c.post(action, data={**form, "csrf": csrf}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "Cross-origin" in r.text
    assert "production" not in c.get("/console/prompts/xss-prompt").text.split("Diff")[0].split("Labels")[1].replace('value="production"', "")
    r = c.post(action, data={**form, "csrf": csrf}, headers={"origin": env["url"]})
    assert r.status_code == 303
    other.close()


def test_the_sign_in_form_needs_its_own_token(env: dict[str, Any]) -> None:
    c = client(env["url"])
    r = c.post("/console/login", data={"user": "", "password": ADMIN_KEY})
    assert r.status_code == 403 and "gatehouse_console=" not in r.headers.get("set-cookie", "")


# ---- roles and tenants --------------------------------------------------------------------

def test_a_viewer_may_not_change_anything(env: dict[str, Any]) -> None:
    c, csrf = signed_in(env, "viewer", PASSWORD)
    for action, form in (("/console/prompts/xss-prompt/label", {"label": "staging", "version": "1"}),
                         ("/console/prompts/xss-prompt/rollback", {"label": "production"}),
                         ("/console/prompts/push", {"document": "id: v\nmessages: [{role: user, template: x}]"}),
                         ("/console/policies/reload", {}), ("/console/garden/reload", {})):
        r = c.post(action, data={**form, "csrf": csrf})
        assert r.status_code == 403 and "may only read" in r.text, action
    assert "staging" not in c.get("/console/prompts").text


def test_a_tenant_scoped_viewer_sees_only_its_tenant(env: dict[str, Any]) -> None:
    c, _ = signed_in(env, "acme-viewer", PASSWORD)
    acme, globex = env["ids"]["acme"], env["ids"]["globex"]
    assert wait_visible(c, f"/console/traffic/{acme}").status_code == 200
    assert c.get(f"/console/traffic/{globex}").status_code == 404  # exactly like a missing record
    listing = c.get("/console/traffic").text
    assert acme in listing and globex not in listing
    assert globex not in c.get("/console/traffic", params={"tenant": "globex"}).text  # the filter cannot widen it
    assert 'value="acme"' in c.get("/console/policies", params={"tenant": "globex"}).text
    assert c.get("/console/policies", params={"key": "globex-key"}).status_code == 404
    admin, _ = signed_in(env)
    assert wait_visible(admin, f"/console/traffic/{globex}").status_code == 200


# ---- stores and limits ----------------------------------------------------------------------

def test_the_audit_log_is_append_only(env: dict[str, Any]) -> None:
    db = sqlite3.connect(env["tmp"] / "console.db")
    try:
        assert db.execute("SELECT count(*) FROM audit").fetchone()[0] > 0
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE audit SET actor = 'someone-else'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM audit")
    finally:
        db.close()


def test_forms_are_size_limited(env: dict[str, Any]) -> None:
    c, csrf = signed_in(env)
    r = c.post("/console/policies/dry-run", data={"csrf": csrf, "text": "x" * (300 * 1024)})
    assert r.status_code == 413


def test_reports_are_served_only_from_the_reports_directory(env: dict[str, Any]) -> None:
    c, _ = signed_in(env)
    reports = env["tmp"] / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "run.html").write_text(f"<html><body><h1>Report</h1>{XSS}</body></html>")
    r = c.get("/console/evals/report", params={"name": "run.html"})
    assert r.status_code == 200 and r.headers["content-security-policy"].startswith("sandbox")
    assert c.get("/console/evals/report", params={"name": "../console.db"}).status_code == 404
    assert c.get("/console/evals/report", params={"name": "/etc/passwd"}).status_code == 404
    assert 'sandbox src="/console/evals/report?name=run.html"' in c.get("/console/evals", params={"report": "run.html"}).text


def test_repeated_failed_sign_ins_are_throttled(env: dict[str, Any]) -> None:
    def attempt(user: str, password: str) -> httpx.Response:
        with httpx.Client(base_url=env["url"], timeout=30) as c:
            token = LOGIN_RE.search(c.get("/console/login").text).group(1)  # type: ignore[union-attr]
            return c.post("/console/login", data={"login_csrf": token, "user": user, "password": password},
                          headers={"cookie": f"gatehouse_console_login={token}"})

    for _ in range(5):
        assert attempt("guessed-name", "wrong").status_code == 401
    r = attempt("guessed-name", "wrong")
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and "Too many failed sign-ins" in r.text
    assert attempt("viewer", PASSWORD).status_code == 303  # other names are not affected


def test_login_throttle_forgets_old_failures() -> None:
    from gateway.console.store import LoginThrottle

    now = [0.0]
    t = LoginThrottle(limit=3, window=60, clock=lambda: now[0])
    key = ("10.0.0.1", "alice")
    for _ in range(3):
        assert t.retry_after(key) == 0
        t.failed(key)
    assert t.retry_after(key) == pytest.approx(60)
    now[0] = 30
    assert t.retry_after(key) == pytest.approx(30)
    now[0] = 61
    assert t.retry_after(key) == 0
    t.failed(key)
    t.succeeded(key)
    assert t.retry_after(key) == 0
