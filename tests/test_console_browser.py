"""The console in a real browser: headless Chromium from Debian, driven by Selenium.

One gateway and one browser for the whole module. Each scenario is one thing a user
does: sign in, stream a playground answer, run a side-by-side and record a
preference, move a prompt label and see the next request use it, dry-run a policy,
filter traffic to blocked requests and open one, a forged form refused (CSRF), a
viewer refused an editor action.

Needs ``chromium`` and ``chromium-driver`` (Debian packages; ``.ci/run`` installs them
when missing). Without them the module is skipped and says so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with console_gateway(tmp) as (url, app):
            browser = start_browser(tmp / "profile")
            try:
                yield {"url": url, "app": app, "b": browser, "tmp": tmp}
            finally:
                browser.quit()


def wait(b: Any, cond: Any, timeout: float = 30) -> Any:
    return WebDriverWait(b, timeout).until(cond)


def sign_in(env: dict[str, Any], user: str = "", password: str = ADMIN_KEY) -> None:
    b = env["b"]
    b.get(env["url"] + "/console/login")
    if b.find_elements(By.ID, "sign-in") == []:  # still signed in: sign out first
        b.find_element(By.CSS_SELECTOR, "header form button").click()
        wait(b, EC.presence_of_element_located((By.ID, "sign-in")))
    b.find_element(By.ID, "user").clear()
    b.find_element(By.ID, "user").send_keys(user)
    b.find_element(By.ID, "password").send_keys(password)
    b.find_element(By.ID, "sign-in").click()
    wait(b, EC.url_contains("/console/garden"))


def run_and_wait(b: Any, sides: tuple[str, ...] = ("a",)) -> None:
    b.find_element(By.ID, "run").click()
    for side in sides:
        wait(b, EC.text_to_be_present_in_element((By.ID, f"status-{side}"), "Done"))


def push_prompt(env: dict[str, Any], document: str) -> None:
    b = env["b"]
    b.get(env["url"] + "/console/prompts")
    b.find_element(By.ID, "document").send_keys(document)
    b.find_element(By.ID, "push").click()
    wait(b, EC.url_contains("/console/prompts/"))
    errs = b.find_elements(By.ID, "error-message")
    assert not errs, errs[0].text


def forge_post(b: Any, action: str, fields: dict[str, str]) -> None:
    """Submit a form the console did not render (as a hostile page or a stale tab would)."""
    b.execute_script(
        "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];"
        "for (const [k, v] of Object.entries(arguments[1])) { const i = document.createElement('input');"
        " i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); }"
        "document.body.appendChild(f); f.submit();", action, fields)


def test_sign_in_with_the_admin_key_shows_the_model_garden(env: dict[str, Any]) -> None:
    b = env["b"]
    b.get(env["url"] + "/console")
    wait(b, EC.url_contains("/console/login"))
    b.find_element(By.ID, "password").send_keys("wrong-key")
    b.find_element(By.ID, "sign-in").click()
    assert "Wrong user name" in wait(b, EC.presence_of_element_located((By.ID, "login-error"))).text
    sign_in(env)
    assert b.find_element(By.TAG_NAME, "h1").text == "Model Garden"
    cookie = b.get_cookie("gatehouse_console")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert "echo-a" in b.page_source and "closed" in b.page_source


def test_playground_streams_an_answer_with_its_details(env: dict[str, Any]) -> None:
    b = env["b"]
    sign_in(env)
    b.get(env["url"] + "/console/playground?route=demo")
    b.find_element(By.ID, "message").send_keys("please process my refund, write to me at ann@example.com")
    run_and_wait(b)
    answer = b.find_element(By.ID, "answer-a").text
    assert "refund" in answer and "ann@example.com" not in answer  # the PII rule redacted the input
    rid = b.find_element(By.ID, "record-a").text
    assert rid.startswith("req_")
    verdicts = b.find_element(By.ID, "verdicts-a").text
    assert "flag-refund" in verdicts and "redact-email" in verdicts
    assert b.find_element(By.ID, "policy-a").text.startswith("console-test@1")
    assert "ms" in b.find_element(By.ID, "latency-a").text


def test_side_by_side_records_a_preference_as_pairwise_feedback(env: dict[str, Any]) -> None:
    b = env["b"]
    sign_in(env)
    b.get(env["url"] + "/console/sxs")
    Select(b.find_element(By.ID, "route_a")).select_by_value("demo")
    Select(b.find_element(By.ID, "route_b")).select_by_value("fixed")
    b.find_element(By.ID, "message").send_keys("which answer is better")
    run_and_wait(b, ("a", "b"))
    assert b.find_element(By.ID, "answer-a").text == "which answer is better"
    assert b.find_element(By.ID, "answer-b").text == "A fixed answer from the second route."
    id_a, id_b = b.find_element(By.ID, "record-a").text, b.find_element(By.ID, "record-b").text
    b.find_element(By.ID, "comment").send_keys("echo is what I asked for")
    b.find_element(By.ID, "pick-a").click()
    stored = wait(b, EC.presence_of_element_located((By.ID, "preference-stored"))).text
    assert id_a in stored and id_b in stored
    # the same store tuning and AutoSxS read
    from gateway.console.data import feedback_for

    items = feedback_for(env["tmp"] / "registry", id_a)
    assert [(f["request_id"], f["preferred_over"]) for f in items] == [(id_a, id_b)]
    b.get(env["url"] + f"/console/traffic/{id_b}")
    assert "was preferred over this one" in b.page_source


def test_moving_a_label_changes_the_version_the_next_request_uses(env: dict[str, Any]) -> None:
    b = env["b"]
    sign_in(env)
    doc = "id: greeter\nmessages:\n  - role: system\n    template: 'Greet {{ name }} ({V}).'\nvariables:\n  name: {description: who to greet}\n"
    push_prompt(env, doc.replace("{V}", "one"))
    push_prompt(env, doc.replace("{V}", "two"))
    assert "/console/prompts/greeter" in b.current_url

    def move(version: str) -> None:
        b.get(env["url"] + "/console/prompts/greeter")
        b.find_element(By.ID, "label").clear()
        b.find_element(By.ID, "label").send_keys("production")
        Select(b.find_element(By.ID, "version")).select_by_value(version)
        b.find_element(By.ID, "move-label").click()
        wait(b, EC.text_to_be_present_in_element((By.ID, "label-production"), f"v{version}"))

    def run_label() -> str:
        b.get(env["url"] + "/console/playground?route=demo&prompt=greeter&ref=label:production")
        b.find_element(By.ID, "var_name").send_keys("Ada")
        b.find_element(By.ID, "message").send_keys("hi")
        run_and_wait(b)
        return str(b.find_element(By.ID, "prompt-a").text)

    move("1")
    assert run_label() == "greeter@1"
    move("2")
    assert run_label() == "greeter@2"
    b.get(env["url"] + "/console/audit?action=prompt-label")
    assert "greeter:production" in b.find_element(By.ID, "audit-table").text


def test_policy_dry_run_shows_each_check_score_and_action(env: dict[str, Any]) -> None:
    b = env["b"]
    sign_in(env)
    b.get(env["url"] + "/console/policies")
    assert b.find_element(By.ID, "policy-version").text.startswith("console-test@1")
    b.find_element(By.ID, "text").send_keys("this is forbidden, mail bob@example.com")
    b.find_element(By.ID, "dry-run").click()
    wait(b, EC.presence_of_element_located((By.ID, "dry-results")))
    assert b.find_element(By.ID, "outcome-input").text == "block"
    assert b.find_element(By.ID, "outcome-output").text == "block"
    table = b.find_element(By.ID, "dry-results").text
    assert "block-forbidden" in table and "redact-email" in table and "1.000" in table


def test_traffic_filtered_to_blocked_requests_opens_one(env: dict[str, Any]) -> None:
    b = env["b"]
    sign_in(env)
    b.get(env["url"] + "/console/playground?route=demo")
    b.find_element(By.ID, "message").send_keys("say the forbidden word")
    run_and_wait(b)
    assert "content_policy_violation" in b.page_source or "block-forbidden" in b.find_element(By.ID, "error-a").text
    blocked_id = b.find_element(By.ID, "record-a").text
    b.get(env["url"] + "/console/traffic")
    Select(b.find_element(By.ID, "f-action")).select_by_value("block")
    b.find_element(By.ID, "filter").click()
    wait(b, EC.url_contains("action=block"))
    links = b.find_elements(By.CSS_SELECTOR, "a.record-link")
    assert links and blocked_id in [a.text for a in links]
    assert all(r.text.count("block") for r in b.find_elements(By.CSS_SELECTOR, "#traffic-table tbody tr"))
    b.find_element(By.LINK_TEXT, blocked_id).click()
    wait(b, EC.presence_of_element_located((By.ID, "verdicts")))
    assert b.find_element(By.ID, "record-status").text.startswith("400")
    assert "block-forbidden" in b.find_element(By.ID, "verdicts").text


def test_a_forged_form_is_refused(env: dict[str, Any]) -> None:
    b = env["b"]
    sign_in(env)
    b.get(env["url"] + "/console/prompts")
    forge_post(b, "/console/prompts/push", {"document": "id: forged\nmessages: [{role: user, template: hi}]", "csrf": "not-the-token"})
    msg = wait(b, EC.presence_of_element_located((By.ID, "error-message"))).text
    assert "CSRF" in msg
    b.get(env["url"] + "/console/prompts")
    assert "forged" not in b.page_source


def test_a_viewer_is_refused_an_editor_action(env: dict[str, Any]) -> None:
    b = env["b"]
    sign_in(env)
    push_prompt(env, "id: viewer-test\nmessages:\n  - role: user\n    template: hello\n")
    sign_in(env, "viewer", PASSWORD)
    b.get(env["url"] + "/console/prompts/viewer-test")
    assert b.find_elements(By.ID, "move-label") == []  # editors only: not offered
    token = b.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    forge_post(b, "/console/prompts/viewer-test/label", {"label": "production", "version": "1", "csrf": token})
    msg = wait(b, EC.presence_of_element_located((By.ID, "error-message"))).text
    assert "may only read" in msg
    b.get(env["url"] + "/console/audit")
    assert "viewer" in b.find_element(By.ID, "audit-table").text and "refused" in b.find_element(By.ID, "audit-table").text


UNLABELLED_JS = """
return Array.from(document.querySelectorAll('input, select, textarea'))
  .filter(e => e.type !== 'hidden' && !e.closest('[hidden]'))
  .filter(e => !(e.id && document.querySelector('label[for="' + e.id + '"]')) && !e.getAttribute('aria-label') && !e.closest('label'))
  .map(e => e.outerHTML);
"""


def test_every_page_is_labelled_and_keyboard_reachable(env: dict[str, Any]) -> None:
    from selenium.webdriver.common.keys import Keys

    b = env["b"]
    sign_in(env)
    for page in ("garden", "playground?route=demo&prompt=greeter", "sxs?prompt=greeter", "prompts", "prompts/greeter",
                 "policies", "traffic", "evals", "audit"):
        b.get(env["url"] + "/console/" + page)
        assert b.execute_script(UNLABELLED_JS) == [], page
        assert "TODO" not in b.page_source
    b.get(env["url"] + "/console/playground?route=demo")
    b.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    skip = b.switch_to.active_element
    assert skip.text == "Skip to content"
    skip.send_keys(Keys.ENTER)
    assert b.switch_to.active_element.get_attribute("id") == "main"
    # the whole run from the keyboard: focus the message, type, submit with Enter on the button
    b.find_element(By.ID, "message").send_keys("typed with the keyboard")
    b.find_element(By.ID, "run").send_keys(Keys.ENTER)
    wait(b, EC.text_to_be_present_in_element((By.ID, "status-a"), "Done"))
    assert b.find_element(By.ID, "answer-a").text == "typed with the keyboard"
