"""A real gateway with the console on, for the console's HTTP and browser tests.

Routes use the in-process mock provider (``echo`` streams the user's words back), the
policy is a small regex + PII document (no model to load), bodies are logged so the
traffic pages have something to escape, and the key store is SQLite so console users
can be created. One viewer is scoped to tenant ``acme``; one editor and one unscoped
viewer see everything.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.config import load_settings, parse_settings
from tests.support import gateway

ADMIN_KEY = "sk-console-admin-test"
TENANT_KEY = "sk-console-acme-key"
OTHER_KEY = "sk-console-globex-key"
PASSWORD = "correct horse battery staple"
USERS = {"editor": ("editor", None), "viewer": ("viewer", None), "acme-viewer": ("viewer", "acme")}

POLICY = """
id: console-test
version: 1
owner: test@example.com
description: blocks a marker word and secrets, redacts emails
expose_verdicts: true
rules:
  - id: block-forbidden
    direction: both
    action: block
    checks:
      - type: regex
        deny: ['\\bforbidden\\b']
  - id: redact-email
    direction: input
    action: redact
    checks:
      - type: pii
        entities: [email]
  - id: flag-refund
    direction: input
    action: flag
    checks:
      - type: regex
        deny: ['\\brefund\\b']
"""


def console_raw(tmp: Path, *, extra_routes: list[dict[str, Any]] | None = None, policy: str = POLICY,
                cookie_secure: bool = True, **sections: Any) -> dict[str, Any]:
    (tmp / "policies").mkdir(exist_ok=True)
    (tmp / "policies" / "p.yaml").write_text(policy)
    raw = {
        "auth": {"keys": [{"id": "acme-key", "tenant": "acme", "key": TENANT_KEY},
                          {"id": "globex-key", "tenant": "globex", "key": OTHER_KEY}],
                 "store": "sqlite", "sqlite_path": str(tmp / "keys.db")},
        "admin": {"key": ADMIN_KEY},
        "routes": [
            {"name": "demo", "description": "echo, two arms",
             "targets": [{"name": "echo-a", "provider": "mock", "model": "echo", "weight": 50, "variant": "A"},
                         {"name": "echo-b", "provider": "mock", "model": "echo", "weight": 50, "variant": "B"}]},
            {"name": "fixed", "targets": [{"name": "fixed-1", "provider": "mock", "model": "fixed:A fixed answer from the second route."}]},
            *(extra_routes or []),
        ],
        "traffic_log": {"sink": "jsonl", "path": str(tmp / "traffic.jsonl"), "log_bodies": True},
        "policies": {"paths": [str(tmp / "policies")], "poll_seconds": 0.2},
        "safety": {"backend": "none"},
        "prompts": {"sqlite_path": str(tmp / "prompts.db")},
        "registry": {"path": str(tmp / "registry")},
        "console": {"enabled": True, "cookie_secure": cookie_secure, "db_path": str(tmp / "console.db"), "reports_dir": str(tmp / "reports")},
    }
    raw.update(sections)
    return raw


def console_settings(tmp: Path, **kw: Any) -> Any:
    return parse_settings(console_raw(tmp, **kw), "<console-test>", base_dir=str(tmp))


@contextlib.contextmanager
def console_gateway(tmp: Path, *, config_file: bool = False, **kw: Any) -> Iterator[tuple[str, Any]]:
    """The console gateway on embedded settings, or (``config_file=True``) loaded from
    ``tmp/gateway.yaml`` so routes can be rewritten and reloaded (canary deploys)."""
    if config_file:
        path = tmp / "gateway.yaml"
        path.write_text(yaml.safe_dump(console_raw(tmp, **kw), sort_keys=False))
        settings, app_kw = load_settings(path), {"config_path": path}
    else:
        settings, app_kw = console_settings(tmp, **kw), {}
    with gateway(settings, **app_kw) as (url, app):
        import asyncio

        from gateway.console.users import UserStore

        async def add_users() -> None:
            store = UserStore(settings)
            for name, (role, tenant) in USERS.items():
                await store.put(name, role, PASSWORD, tenant)
            store.close()

        asyncio.run(add_users())
        yield url, app


CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
LOGIN_RE = re.compile(r'name="login_csrf" value="([^"]+)"')


def sign_in(client: httpx.Client, user: str = "", password: str = ADMIN_KEY) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    page = client.get("/console/login")
    token = LOGIN_RE.search(page.text).group(1)  # type: ignore[union-attr]
    resp = client.post("/console/login", data={"login_csrf": token, "user": user, "password": password, "next": "/console/garden"})
    assert resp.status_code == 303, resp.text
    return csrf_of(client)


def csrf_of(client: httpx.Client) -> str:
    page = client.get("/console/garden")
    m = CSRF_RE.search(page.text)
    assert m, page.text[:500]
    return m.group(1)


# clients a test opens are closed after it (tests/conftest.py), so no socket outlives its test
OPEN_CLIENTS: list[httpx.Client] = []


def client(url: str, **kw: Any) -> httpx.Client:
    """An HTTP client for a gateway started with ``cookie_secure=False`` (httpx's cookie jar,
    like Python's, keeps Secure cookies for https only; browsers also keep them on localhost)."""
    kw.setdefault("follow_redirects", False)
    c = httpx.Client(base_url=url, timeout=30, **kw)
    OPEN_CLIENTS.append(c)
    return c


# ---- the browser (Debian's chromium + chromium-driver, driven by Selenium) -----------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars")


def start_browser(profile: Path, width: int = 1280, height: int = 800) -> Any:
    """Headless Chromium with a fresh profile; never downloads a browser or a driver."""
    from selenium import webdriver

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in HEADLESS_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--window-size={width},{height}")
    opts.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
