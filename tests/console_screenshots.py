"""Screenshots of every console page, for docs/console/ and the README (``make screenshots``).

Starts a real gateway with the console on (the test fixture's config: mock routes, a
regex + PII policy, bodies logged), fills it through the console itself in headless
Chromium (a prompt with two versions and a label, playground and side-by-side runs, a
blocked request, a preference) plus a small registry with lineage and a report, then
saves one full-page PNG per page, 1280 px wide (at least 800 high), and the playground
420 px wide. The canary page needs a gateway loaded from a config file and a real (tiny,
built here) model, so it runs on a second gateway.

    python -m tests.console_screenshots docs/console [--only canary registry-lineage]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.console_support import CHROMEDRIVER, CHROMIUM, TENANT_KEY, console_gateway, start_browser

PROMPT = ("id: support-triage\nnote: {note}\nmessages:\n  - role: system\n    template: 'You triage tickets for {{{{ product }}}}. {style}'\n"
          "variables:\n  product: {{description: the product the ticket is about, default: Gatehouse}}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="docs/console", help="directory for the PNG files")
    p.add_argument("--only", nargs="+", metavar="NAME", help="save only these pages (file names without .png)")
    args = p.parse_args(argv)
    if CHROMIUM is None or CHROMEDRIVER is None:
        print("console_screenshots: Chromium is not installed (apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with console_gateway(tmp) as (url, _app):
            seed_registry(tmp)
            b = start_browser(tmp / "profile")
            try:
                shots(b, url, out, tmp, set(args.only or ()))
            finally:
                b.quit()
    if not args.only or "canary" in args.only:
        with tempfile.TemporaryDirectory() as d:
            canary_shot(Path(d), out)
    for f in sorted(out.glob("*.png")):
        print(f)
    return 0


def seed_registry(tmp: Path) -> None:
    from tuning.registry import Registry  # a script beside the tests: it may use tuning

    (tmp / "qa.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    (tmp / "tiny").mkdir()
    (tmp / "tiny" / "adapter.bin").write_bytes(b"w" * 64)
    report = tmp / "reports" / "sxs-tiny-vs-base.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        "<!doctype html><html><head><meta charset=utf-8><style>body{font-family:sans-serif;margin:1.5rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .6rem}</style></head><body>"
        "<h1>Side by side: tiny vs base</h1><table><tr><th>metric</th><th>value</th></tr>"
        "<tr><td>win rate (tiny)</td><td>example only</td></tr></table>"
        "<p>An example report for the screenshot; real reports come from <code>gatehouse eval sxs</code>.</p></body></html>")
    with Registry(tmp / "registry") as reg:
        ds = reg.register("dataset", tmp / "qa.jsonl", name="support-qa")
        model = reg.register("model", tmp / "tiny", name="tiny-support", parents=[ds.id])
        reg.register("eval_report", report, name="sxs-tiny", parents=[model.id])
        reg.register("deployment", None, name="canary-tiny", metadata={"weight": 10}, parents=[model.id])


def save_page(b: Any, out: Path, name: str, width: int = 1280) -> None:
    """The whole page at ``width`` CSS pixels (at least 800 high, at most 2400)."""
    metrics = {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": False}
    b.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    height = int(b.execute_script("return document.documentElement.scrollHeight"))
    b.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": max(800, min(height, 2400))})
    b.execute_script("window.scrollTo(0, 0)")
    b.save_screenshot(str(out / f"{name}.png"))
    b.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def canary_shot(tmp: Path, out: Path) -> None:
    """A registered tiny model deployed as a 10 % canary on ``demo`` from its page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tuning.registry import Registry
    from tuning.testing import build_tiny_lm

    with Registry(tmp / "registry") as reg:
        model = reg.register("model", build_tiny_lm(tmp / "tiny"), name="assistant-sft")
    with console_gateway(tmp, config_file=True) as (url, _app):
        b = start_browser(tmp / "profile")
        try:
            b.get(url + "/console/login")
            b.find_element(By.ID, "password").send_keys("sk-console-admin-test")
            b.find_element(By.ID, "sign-in").click()
            WebDriverWait(b, 30).until(EC.url_contains("/console/garden"))
            b.get(f"{url}/console/registry/{model.id}")
            Select(b.find_element(By.ID, "canary-route")).select_by_value("demo")
            b.find_element(By.ID, "canary-weight").clear()
            b.find_element(By.ID, "canary-weight").send_keys("10")
            b.find_element(By.ID, "deploy-canary").click()
            WebDriverWait(b, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#canary p.note")))
            save_page(b, out, "canary")
        finally:
            b.quit()


def shots(b: Any, url: str, out: Path, tmp: Path, only: frozenset[str] | set[str] = frozenset()) -> None:
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def wait(cond: Any) -> Any:
        return WebDriverWait(b, 30).until(cond)

    def save(name: str, width: int = 1280) -> None:
        if not only or name in only:
            save_page(b, out, name, width)

    def run(sides: tuple[str, ...] = ("a",)) -> None:
        b.find_element(By.ID, "run").click()
        for s in sides:
            wait(EC.text_to_be_present_in_element((By.ID, f"status-{s}"), "Done"))

    b.get(url + "/console/login")
    save("login")
    b.find_element(By.ID, "password").send_keys("sk-console-admin-test")
    b.find_element(By.ID, "sign-in").click()
    wait(EC.url_contains("/console/garden"))
    for i, (note, style) in enumerate((("first cut", "Be brief."), ("adds a tone rule", "Be brief and kind."))):
        b.get(url + "/console/prompts")
        b.find_element(By.ID, "document").send_keys(PROMPT.format(note=note, style=style))
        b.find_element(By.ID, "push").click()
        wait(EC.url_contains("/console/prompts/support-triage"))
        b.find_element(By.ID, "label").clear()
        b.find_element(By.ID, "label").send_keys("production")
        Select(b.find_element(By.ID, "version")).select_by_value(str(i + 1))
        b.find_element(By.ID, "move-label").click()
        wait(EC.text_to_be_present_in_element((By.ID, "label-production"), f"v{i + 1}"))
    api = httpx.Client(base_url=url, headers={"authorization": f"Bearer {TENANT_KEY}"}, timeout=30)
    for text in ("where is my order?", "please refund me", "my email is ann@example.com", "this is forbidden"):
        api.post("/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": text}]})
    b.get(url + "/console/garden")
    save("model-garden")
    b.get(url + "/console/playground?route=demo&prompt=support-triage&ref=label:production")
    b.find_element(By.ID, "message").send_keys("My invoice shows a refund I never asked for; reach me at ann@example.com")
    run()
    save("playground")
    b.get(url + "/console/sxs?prompt=support-triage")
    b.find_element(By.ID, "message").send_keys("The dashboard will not load")
    run(("a", "b"))
    save("side-by-side")
    b.find_element(By.ID, "pick-b").click()
    wait(EC.presence_of_element_located((By.ID, "preference-stored")))
    b.get(url + "/console/prompts/support-triage?from=1&to=2")
    save("prompt")
    b.get(url + "/console/policies?model=demo")
    b.find_element(By.ID, "text").send_keys("a forbidden word, and mail me at bob@example.com about a refund")
    b.find_element(By.ID, "dry-run").click()
    wait(EC.presence_of_element_located((By.ID, "dry-results")))
    save("policies-dry-run")
    b.get(url + "/console/traffic?action=block")
    save("traffic-blocked")
    b.find_element(By.CSS_SELECTOR, "a.record-link").click()
    wait(EC.presence_of_element_located((By.ID, "verdicts")))
    save("traffic-record")
    b.get(url + "/console/evals?report=sxs-tiny-vs-base.html")
    save("evaluations")
    b.get(url + "/console/evals?kind=model")
    b.find_element(By.CSS_SELECTOR, "td a").click()
    wait(EC.presence_of_element_located((By.TAG_NAME, "svg")))
    save("registry-lineage")
    b.get(url + "/console/audit")
    save("audit-log")
    b.get(url + "/console/playground?route=demo")
    b.find_element(By.ID, "message").send_keys("hello from a narrow window")
    run()
    save("playground-narrow", width=420)


if __name__ == "__main__":
    sys.exit(main())
