"""Prompts (versions, diff, labels; push, move, roll back) and Policies (effective rules,
dry run, reload). Changes need the editor role and land in the audit log with before/after."""

from __future__ import annotations

import time
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.console import data
from gateway.console.pages_run import prompt_registry
from gateway.console.store import Session
from gateway.console.web import PATH, SECURITY_HEADERS, Console, ConsoleError, Form, action, page
from gateway.prompts.model import PromptFormatError, parse_spec
from gateway.prompts.registry import PromptNotFound
from gateway.prompts.store import PromptStoreError
from policies.engine import Engine


def _registry(c: Console) -> Any:
    reg = prompt_registry(c)
    if reg is None:
        raise ConsoleError(503, "The prompt registry is not available in this gateway.")
    return reg


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


# ---- prompts ---------------------------------------------------------------------------

async def prompts(c: Console, request: Request, s: Session) -> Response:
    items = await _registry(c).list()
    return c.render(request, "prompts.html", active="prompts", items=items, push_error="", push_text="")


async def prompt_detail(c: Console, request: Request, s: Session) -> Response:
    reg = _registry(c)
    pid = request.path_params["prompt_id"]
    versions = await reg.versions(pid)
    if not versions:
        raise ConsoleError(404, f"No prompt {pid!r}.")
    labels = await reg.labels(pid)
    q = request.query_params
    latest = versions[-1].version
    try:
        a = int(q.get("from") or max(1, latest - 1))
        b = int(q.get("to") or latest)
    except ValueError:
        raise ConsoleError(400, "from and to must be version numbers.") from None
    try:
        diff = await reg.diff(pid, a, b) if a != b else ""
    except PromptNotFound as exc:
        raise ConsoleError(404, str(exc)) from None
    history = [e for e in await c.store.audit_log(500) if e.action in ("prompt-label", "prompt-rollback") and e.target.startswith(pid + ":")]
    return c.render(request, "prompt.html", active="prompts", pid=pid, versions=list(reversed(versions)), labels=labels,
                    diff_lines=diff.splitlines(), a=a, b=b, history=history, latest=latest)


async def push_prompt(c: Console, request: Request, s: Session, form: Form) -> Response:
    text = form.get("document")
    try:
        raw = yaml.safe_load(text)
        spec = parse_spec(raw, "document")
    except yaml.YAMLError as exc:
        await c.audit(s, "prompt-push", "(invalid)", after={"error": str(exc)[:500]}, ok=False)
        raise ConsoleError(400, f"The document is not valid YAML or JSON: {exc}") from None
    except PromptFormatError as exc:
        await c.audit(s, "prompt-push", "(invalid)", after={"error": str(exc)[:500]}, ok=False)
        raise ConsoleError(400, str(exc)) from None
    reg = _registry(c)
    before = await reg.store.latest(spec.id)
    if spec.author is None:
        spec = parse_spec({**raw, "author": s.user}, "document")
    pv, created = await reg.push(spec)
    await c.audit(s, "prompt-push", f"{pv.id}@{pv.version}", before={"latest": before},
                  after={"latest": pv.version, "created": created, "content_hash": pv.content_hash})
    return _redirect(f"{PATH}/prompts/{pv.id}?pushed={pv.version}")


async def move_label(c: Console, request: Request, s: Session, form: Form) -> Response:
    reg = _registry(c)
    pid = request.path_params["prompt_id"]
    label, version = form.get("label").strip(), form.get("version")
    if not version.isdigit():
        raise ConsoleError(400, "Choose the version the label should point at.")
    before = (await reg.labels(pid)).get(label)
    try:
        await reg.set_label(pid, label, int(version))
    except (PromptNotFound, PromptStoreError, ValueError) as exc:
        await c.audit(s, "prompt-label", f"{pid}:{label}", before={"version": before}, after={"error": str(exc)}, ok=False)
        raise ConsoleError(400, str(exc)) from None
    await c.audit(s, "prompt-label", f"{pid}:{label}", before={"version": before}, after={"version": int(version)})
    return _redirect(f"{PATH}/prompts/{pid}")


async def rollback_label(c: Console, request: Request, s: Session, form: Form) -> Response:
    reg = _registry(c)
    pid, label = request.path_params["prompt_id"], form.get("label").strip()
    try:
        old, new = await reg.rollback(pid, label)
    except (PromptStoreError, PromptNotFound, ValueError) as exc:
        await c.audit(s, "prompt-rollback", f"{pid}:{label}", after={"error": str(exc)}, ok=False)
        raise ConsoleError(409, str(exc)) from None
    await c.audit(s, "prompt-rollback", f"{pid}:{label}", before={"version": old}, after={"version": new})
    return _redirect(f"{PATH}/prompts/{pid}")


# ---- policies --------------------------------------------------------------------------

def _guardrails(c: Console) -> Any:
    return next((st for st in c.rt.stages if st.name == "guardrails"), None)


async def _key_scope(c: Console, key_id: str) -> tuple[str | None, str | None]:
    """(tenant, policy) of an API key id, from the key store."""
    for rec in await c.rt.keys.list():
        if rec.key_id == key_id:
            return rec.tenant, rec.policy
    raise ConsoleError(404, f"No API key {key_id!r} in the key store.")


async def _policy_context(c: Console, s: Session, q: Any) -> dict[str, Any]:
    stage = _guardrails(c)
    tenant, model, key_id = q.get("tenant", "").strip(), q.get("model", "").strip(), q.get("key", "").strip()
    if s.tenant is not None:
        tenant = s.tenant
    policy = None
    if key_id:
        key_tenant, policy = await _key_scope(c, key_id)
        if s.tenant is not None and key_tenant != s.tenant:
            raise ConsoleError(404, f"No API key {key_id!r} in the key store.")
        tenant = tenant or key_tenant or ""
    ctx: dict[str, Any] = {"active": "policies", "tenant": tenant, "model": model, "key": key_id, "stage": stage,
                           "routes": sorted(c.rt.router.routes), "effective": None, "dry": None, "text": ""}
    if stage is None:
        return ctx
    ps = stage.policies
    policy = policy or stage.default_policy
    ctx["policy"] = policy
    ctx["effective"] = ps.explain(tenant or None, model or None, key_id or None, policy=policy)
    watcher = stage.watcher
    err = watcher.last_error if watcher is not None else None
    text, _ = c.rt.metrics.render()
    ctx["reload"] = {"version": ps.version, "sources": list(ps.sources), "watching": watcher is not None,
                     "last_error": [str(p) for p in err.problems] if err is not None else [],
                     "counts": data.reload_counts(text.decode()), "documents": ps.documents}
    return ctx


async def policies_page(c: Console, request: Request, s: Session) -> Response:
    return c.render(request, "policies.html", **await _policy_context(c, s, request.query_params))


async def dry_run(c: Console, request: Request, s: Session, form: Form) -> Response:
    ctx = await _policy_context(c, s, form_query(form))
    stage = ctx["stage"]
    text = form.get("text")
    ctx["text"] = text
    if stage is None:
        raise ConsoleError(409, "No policies are configured (policies.paths), so there is nothing to dry-run.")
    if not text.strip():
        raise ConsoleError(400, "Write a text to check.")
    # a private engine over the live policies and models: a dry run never counts in the metrics
    engine = Engine(stage.policies, safety=stage.engine.safety, recitation=stage.engine.recitation)
    results = {}
    for direction, rules in ctx["effective"].items():
        t0 = time.perf_counter()
        out = await engine.evaluate_rules(rules, direction, text)
        results[direction] = {"outcome": out, "ms": (time.perf_counter() - t0) * 1000}
    ctx["dry"] = results
    return c.render(request, "policies.html", **ctx)


def form_query(form: Form) -> dict[str, str]:
    return {k: form.get(k) for k in ("tenant", "model", "key")}


async def reload_policies(c: Console, request: Request, s: Session, form: Form) -> Response:
    stage = _guardrails(c)
    if stage is None or stage.watcher is None:
        raise ConsoleError(409, "Policy reload is off (no policies, or policies.reload: false).")
    before = stage.policies.version
    result = await stage.watcher.reload("console")
    err = stage.watcher.last_error
    await c.audit(s, "policy-reload", "policies", before={"version": before},
                  after={"version": stage.policies.version, "result": result,
                         **({"problems": [str(p) for p in err.problems][:20]} if err is not None else {})},
                  ok=result != "error")
    return _redirect(f"{PATH}/policies?reloaded={result}")


def routes(c: Console) -> list[tuple[str, list[str], Any]]:
    return [
        ("/prompts", ["GET"], page(c, prompts)),
        ("/prompts/push", ["POST"], action(c, push_prompt, editor=True, name="prompt-push")),
        ("/prompts/{prompt_id}", ["GET"], page(c, prompt_detail)),
        ("/prompts/{prompt_id}/label", ["POST"], action(c, move_label, editor=True, name="prompt-label")),
        ("/prompts/{prompt_id}/rollback", ["POST"], action(c, rollback_label, editor=True, name="prompt-rollback")),
        ("/policies", ["GET"], page(c, policies_page)),
        ("/policies/dry-run", ["POST"], action(c, dry_run, name="policy-dry-run")),
        ("/policies/reload", ["POST"], action(c, reload_policies, editor=True, name="policy-reload")),
    ]



