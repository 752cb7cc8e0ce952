"""Read pages: Model Garden, Traffic, Evaluations and registry, Audit log (and config reload)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, get_args

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.config import Capability
from gateway.console import data, pages_canary
from gateway.console.store import Session
from gateway.console.web import PATH, SECURITY_HEADERS, Console, ConsoleError, Form, action, page

CAPABILITIES = get_args(Capability)
REPORT_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"


async def garden(c: Console, request: Request, s: Session) -> Response:
    rt = c.rt
    cap = request.query_params.get("capability", "")
    if cap and cap not in CAPABILITIES:
        raise ConsoleError(400, f"Unknown capability {cap!r}; choose one of {', '.join(CAPABILITIES)}.")
    text, _ = rt.metrics.render()
    stats = data.route_stats(text.decode())
    routes: list[dict[str, Any]] = []
    for name, route in sorted(rt.router.routes.items()):
        if cap and cap not in route.capabilities:
            continue
        arms = []
        for kind, arm in [("target", a) for a in route.arms] + [("fallback", a) for a in route.fallbacks]:
            try:
                healthy = bool(await arm.provider.ready())
            except Exception:
                healthy = False
            st = stats.get(name, data.RouteStats())
            req, err = st.by_target.get(arm.name, (0.0, 0.0))
            t = arm.target
            arms.append({"kind": kind, "name": arm.name, "provider": t.provider, "model": t.model, "weight": t.weight,
                         "variant": arm.variant, "healthy": healthy, "circuit": arm.breaker.state,
                         "capabilities": sorted(arm.provider.capabilities), "requests": int(req), "errors": int(err)})
        routes.append({"name": name, "description": route.settings.description or "", "capabilities": sorted(route.capabilities),
                       "stats": stats.get(name, data.RouteStats()), "arms": arms, "prompt": route.settings.prompt or ""})
    return c.render(request, "garden.html", active="garden", routes=routes, capability=cap, capabilities=CAPABILITIES,
                    reload_note=request.query_params.get("reloaded", ""))


async def reload_config(c: Console, request: Request, s: Session, form: Form) -> Response:
    before = sorted(c.rt.router.routes)
    result = await c.rt.reload()
    await c.audit(s, "config-reload", "routes", before={"routes": before}, after=result, ok=bool(result.get("reloaded")))
    note = "ok" if result.get("reloaded") else "failed"
    if not result.get("reloaded"):
        raise ConsoleError(409, f"The config was not reloaded: {result.get('reason')}")
    return RedirectResponse(f"{PATH}/garden?reloaded={note}", status_code=303, headers=SECURITY_HEADERS)


def _int(v: str, name: str, lo: int, hi: int) -> int | None:
    if not v:
        return None
    if not v.isdigit() or not lo <= int(v) <= hi:
        raise ConsoleError(400, f"{name} must be a whole number from {lo} to {hi}.")
    return int(v)


async def traffic(c: Console, request: Request, s: Session) -> Response:
    q = request.query_params
    status = q.get("status", "")
    if status and status not in data.STATUS_CLASSES and not (status.isdigit() and len(status) == 3):
        raise ConsoleError(400, "status must be 2xx, 4xx, 5xx or a three-digit code.")
    act = q.get("action", "")
    if act and act not in data.ACTIONS:
        raise ConsoleError(400, f"action must be one of {', '.join(data.ACTIONS)}.")
    flt = data.TrafficFilter(
        since_minutes=_int(q.get("since", ""), "since (minutes)", 1, 60 * 24 * 366), model=q.get("model", ""),
        variant=q.get("variant", ""), tenant=q.get("tenant", "") if s.tenant is None else "", status=status,
        action=act, category=q.get("category", ""), limit=_int(q.get("limit", ""), "limit", 1, 1000) or 100,
    )
    reader = data.TrafficReader(c.rt, c.cfg.traffic_scan)
    rows, choices = await reader.query(flt, s.tenant)
    for r in rows:
        r["_action"] = data.verdict_summary(r)
    return c.render(request, "traffic.html", active="traffic", rows=rows, flt=flt, choices=choices,
                    statuses=data.STATUS_CLASSES, actions=data.ACTIONS, scoped=s.tenant)


async def traffic_detail(c: Console, request: Request, s: Session) -> Response:
    rid = request.path_params["request_id"]
    rec = await data.TrafficReader(c.rt, c.cfg.traffic_scan).get(rid)
    # another tenant's record looks exactly like a missing one
    if rec is None or not s.sees_tenant(rec.get("tenant")):
        raise ConsoleError(404, f"No traffic record {rid!r} that you may see (it may be older than the traffic log).")
    s_ = c.rt.settings
    feedback = await asyncio.to_thread(data.feedback_for, s_.resolve_path(s_.registry.path), rid)
    return c.render(request, "record.html", active="traffic", r=rec, feedback=feedback,
                    log_bodies=s_.traffic_log.log_bodies, action=data.verdict_summary(rec))


def _registry_dir(c: Console) -> Path:
    s = c.rt.settings
    return s.resolve_path(s.registry.path)


async def evals(c: Console, request: Request, s: Session) -> Response:
    kind = request.query_params.get("kind", "")
    arts = await asyncio.to_thread(data.artifacts, _registry_dir(c), kind or None)
    reports_dir = c.rt.settings.resolve_path(c.cfg.reports_dir)
    files = await asyncio.to_thread(data.report_files, reports_dir)
    reports = [{"name": str(f.relative_to(reports_dir)), "mtime": f.stat().st_mtime} for f in files]
    report_arts = [a for a in arts if a.kind == "eval_report" and a.path and _report_path(a.path) is not None]
    open_name = request.query_params.get("report", "")
    open_art = request.query_params.get("artifact_report", "")
    return c.render(request, "evals.html", active="evals", artifacts=arts, reports=reports, report_arts=report_arts,
                    kind=kind, open_name=open_name, open_art=open_art, reports_dir=c.cfg.reports_dir)


def _report_path(p: str) -> Path | None:
    path = Path(p)
    if path.is_dir():
        found = sorted(path.glob("*.html"))
        return found[0] if found else None
    return path if path.suffix == ".html" and path.is_file() else None


async def report_view(c: Console, request: Request, s: Session) -> Response:
    """One HTML report, served sandboxed (no scripts, no requests) to open in an iframe."""
    name, art_id = request.query_params.get("name", ""), request.query_params.get("artifact", "")
    path: Path | None = None
    if name:
        root = c.rt.settings.resolve_path(c.cfg.reports_dir).resolve()
        cand = (root / name).resolve()
        if cand.is_relative_to(root) and cand.suffix == ".html" and cand.is_file():
            path = cand
    elif art_id:
        arts = await asyncio.to_thread(data.artifacts, _registry_dir(c), "eval_report")
        art = next((a for a in arts if a.id == art_id), None)
        path = _report_path(art.path) if art is not None and art.path else None
    if path is None:
        raise ConsoleError(404, "No such report.")
    body = await asyncio.to_thread(path.read_bytes)
    headers = {**SECURITY_HEADERS, "content-security-policy": REPORT_CSP}
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


async def artifact(c: Console, request: Request, s: Session) -> Response:
    art_id = request.path_params["artifact_id"]
    arts = await asyncio.to_thread(data.artifacts, _registry_dir(c))
    by_id = {a.id: a for a in arts}
    art = by_id.get(art_id)
    if art is None:
        raise ConsoleError(404, f"No artifact {art_id!r} in the registry.")
    edges = await asyncio.to_thread(data.lineage_edges, _registry_dir(c), art_id)
    graph = data.layout(edges, art_id, {k: v.kind for k, v in by_id.items()})
    parents = [p for p, ch in edges if ch == art_id]
    children = [ch for p, ch in edges if p == art_id]
    canary = await pages_canary.canary_panel(c, art) if art.kind == "model" else None
    return c.render(request, "artifact.html", active="evals", a=art, graph=graph, parents=parents, children=children,
                    canary=canary, canary_done=request.query_params.get("canary", ""),
                    is_report=art.kind == "eval_report" and art.path is not None and _report_path(art.path) is not None)


async def audit(c: Console, request: Request, s: Session) -> Response:
    act = request.query_params.get("action", "")
    entries = await c.store.audit_log(300, act or None)
    return c.render(request, "audit.html", active="audit", entries=entries, action=act)


def routes(c: Console) -> list[tuple[str, list[str], Any]]:
    return [
        ("/garden", ["GET"], page(c, garden)),
        ("/garden/reload", ["POST"], action(c, reload_config, editor=True, name="config-reload")),
        ("/traffic", ["GET"], page(c, traffic)),
        ("/traffic/{request_id}", ["GET"], page(c, traffic_detail)),
        ("/evals", ["GET"], page(c, evals)),
        ("/evals/report", ["GET"], page(c, report_view)),
        ("/registry/{artifact_id:path}", ["GET"], page(c, artifact)),
        ("/audit", ["GET"], page(c, audit)),
    ]
