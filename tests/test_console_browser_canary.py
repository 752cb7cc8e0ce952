"""Canary deploy in a real browser: an editor deploys a registered model from its registry page,
sets its weight and rolls it back; the page and ``GET /admin/routes`` show the live weights.
A viewer's page has no form.

Headless Chromium from Debian (``chromium``, ``chromium-driver``) driven by Selenium; skipped
with a clear message when they are missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console_support import (
    ADMIN_KEY,
    CHROMEDRIVER,
    CHROMIUM,
    PASSWORD,
    console_gateway,
    start_browser,
)

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium chromium-driver; .ci/run installs it): "
                "the console's browser tests cannot run", allow_module_level=True)
pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from gatehouse_core.canary import canary_names
from tuning.registry import Registry
from tuning.testing import build_tiny_lm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        reg = Registry(tmp / "registry")
        try:
            model = reg.register("model", build_tiny_lm(tmp / "tiny"), name="assistant-sft")
        finally:
            reg.close()
        with console_gateway(tmp, config_file=True) as (url, app):
            browser = start_browser(tmp / "profile")
            try:
                yield {"url": url, "app": app, "b": browser, "model": model}
            finally:
                browser.quit()


def wait(b: Any, cond: Any, timeout: float = 60) -> Any:
    return WebDriverWait(b, timeout).until(cond)


def sign_in(env: dict[str, Any], user: str) -> None:
    b = env["b"]
    b.get(env["url"] + "/console/login")
    if b.find_elements(By.ID, "sign-in") == []:  # still signed in: sign out first
        b.find_element(By.CSS_SELECTOR, "header form button").click()
        wait(b, EC.presence_of_element_located((By.ID, "sign-in")))
    b.find_element(By.ID, "user").send_keys(user)
    b.find_element(By.ID, "password").send_keys(PASSWORD)
    b.find_element(By.ID, "sign-in").click()
    wait(b, EC.url_contains("/console/garden"))


def live(url: str) -> dict[str, float]:
    with httpx.Client(timeout=30) as h:
        r = h.get(url + "/admin/routes", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return {a["target"]: a["weight"] for a in r.json()["routes"]["demo"]}


def page_weights(b: Any) -> dict[str, float]:
    rows = b.find_elements(By.CSS_SELECTOR, "table.live-weights tbody tr")
    return {r.find_elements(By.TAG_NAME, "td")[0].text: float(r.find_elements(By.TAG_NAME, "td")[2].get_attribute("data-weight"))
            for r in rows}


def test_editor_deploys_a_canary_sets_its_weight_and_rolls_it_back(env: dict[str, Any]) -> None:
    b, url, model = env["b"], env["url"], env["model"]
    name, _ = canary_names(model.id, model.name, model.content_hash)
    sign_in(env, "editor")
    b.get(f"{url}/console/registry/{model.id}")
    Select(b.find_element(By.ID, "canary-route")).select_by_value("demo")
    weight = b.find_element(By.ID, "canary-weight")
    weight.clear()
    weight.send_keys("10")
    b.find_element(By.ID, "deploy-canary").click()
    wait(b, EC.presence_of_element_located((By.CSS_SELECTOR, "#canary p.note")))
    assert page_weights(b) == {"echo-a": 45.0, "echo-b": 45.0, name: 10.0}
    assert live(url) == {"echo-a": 45.0, "echo-b": 45.0, name: 10.0}

    box = b.find_element(By.ID, "weight-1")
    box.clear()
    box.send_keys("30")
    b.find_element(By.ID, "set-weight-1").click()
    wait(b, EC.url_contains("canary=canary-weight"))
    assert page_weights(b) == {"echo-a": 35.0, "echo-b": 35.0, name: 30.0}
    assert live(url) == page_weights(b)

    b.find_element(By.ID, "rollback-1").click()
    wait(b, EC.url_contains("canary=canary-rollback"))
    assert b.find_elements(By.CSS_SELECTOR, "table.live-weights") == []
    assert live(url) == {"echo-a": 50.0, "echo-b": 50.0}
    b.get(f"{url}/console/audit")
    assert "canary-rollback" in b.page_source and "canary-deploy" in b.page_source


def test_viewer_has_no_canary_form(env: dict[str, Any]) -> None:
    b = env["b"]
    sign_in(env, "viewer")
    b.get(f"{env['url']}/console/registry/{env['model'].id}")
    wait(b, EC.presence_of_element_located((By.ID, "canary-h")))
    assert b.find_elements(By.ID, "canary-form") == [] and b.find_elements(By.ID, "deploy-canary") == []
