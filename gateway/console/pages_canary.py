"""Deploy a registered model as a canary from the console: deploy, set weight, promote, roll back.

The same rewrite as ``gatehouse registry deploy`` / ``promote`` (``gatehouse_core.canary``:
canary target ``canary-<name>-<hash>`` with variant ``canary-<model id>``, weights rescaled
to 100, validated with ``gateway.config.check_raw_config``, atomic write with ``<file>.bak``),
then the gateway reloads its routes in process (``Runtime.reload``, the one reload mechanism
shared with file watching, SIGHUP and ``POST /admin/reload``) and the page shows the weights
read back from the live router. A reload that fails puts the previous file back, so the
file and the live routes never disagree.

Editor only, CSRF-checked, audited with the live weights before and after. A gateway started
on its embedded config (``gatehouse serve --demo``) has no file to rewrite: the form says so.
With several workers, this one reloads at once and the others within their file-watch poll.
Unlike the CLI, the console does not add ``deployment`` artifacts to the registry (the serving
app opens the registry read-only); its record is the audit log.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gatehouse_core.canary import (
    CanaryError,
    canary_names,
    canary_target,
    load_config,
    remove_target,
    restore_backup,
    set_canary,
    write_atomic,
)
from gateway.config import check_raw_config
from gateway.console import data
from gateway.console.store import Session
from gateway.console.web import PATH, SECURITY_HEADERS, Console, ConsoleError, Form, action

NO_FILE = ("This gateway runs on its embedded config (started with --demo or without --config), so there is "
           "no config file to add a canary to. Start it with a config file to deploy canaries from here, e.g. "
           "cp deploy/config/ml-loop.yaml gateway.yaml; gatehouse serve --config gateway.yaml "
           "(console on, a registry, and a route named assistant that takes canaries).")


def _model(c: Console, art_id: str) -> data.ArtifactRow:
    s = c.rt.settings
    arts = data.artifacts(s.resolve_path(s.registry.path), "model")
    art = next((a for a in arts if a.id == art_id), None)
    if art is None:
        raise ConsoleError(404, f"No model {art_id!r} in the registry.")
    return art


def servable(art: data.ArtifactRow) -> str:
    """Why the model cannot be served in process ('' when it can)."""
    if not art.path or not (Path(art.path) / "config.json").is_file():
        return f"{art.id} has no model directory with config.json (stored at {art.path or 'nowhere'}), so it cannot be served."
    return ""


def _weight(form: Form) -> float:
    raw = form.get("weight").strip()
    try:
        w = float(raw)
    except ValueError:
        raise ConsoleError(400, f"The weight must be a number from 0 to 100 (percent of the route's traffic); got {raw!r}.") from None
    if not math.isfinite(w) or not 0 <= w <= 100:
        raise ConsoleError(400, f"The weight must be a number from 0 to 100 (percent of the route's traffic); got {raw!r}.")
    return w


def _live(c: Console, route: str) -> dict[str, float]:
    return {a["target"]: a["weight"] for a in c.rt.live_weights().get(route, [])}


async def canary_panel(c: Console, art: data.ArtifactRow) -> dict[str, Any]:
    """What the artifact page shows for a model: where its canary runs, with the live weights."""
    name, variant = canary_names(art.id, art.name, art.content_hash)
    path: Path | None = c.rt.config_path
    live = c.rt.live_weights()
    panel: dict[str, Any] = {
        "target": name, "variant": variant, "file": str(path) if path else "", "no_file": NO_FILE if path is None else "",
        "unservable": await asyncio.to_thread(servable, art),
        "routes": sorted(n for n, r in c.rt.router.routes.items() if "chat" in r.capabilities),
        "deployed": [], "file_error": "",
    }
    written: dict[str, float] = {}
    if path is not None:
        try:
            raw = await asyncio.to_thread(load_config, path)
        except CanaryError as exc:
            panel["file_error"] = str(exc)
            raw = {}
        for r in raw.get("routes") or []:
            for t in (r.get("targets") or []) if isinstance(r, dict) else []:
                if isinstance(t, dict) and t.get("name") == name:
                    written[str(r.get("name"))] = float(t.get("weight", 1.0))
    serving = {route for route, arms in live.items() if any(a["target"] == name for a in arms)}
    for route in sorted(set(written) | serving):
        panel["deployed"].append({"route": route, "written": written.get(route), "arms": live.get(route, []),
                                  "live": next((a["weight"] for a in live.get(route, []) if a["target"] == name), 0.0)})
    return panel


def _rewrite(path: Path, mutate: Any) -> dict[str, float]:
    raw = load_config(path)
    weights: dict[str, float] = mutate(raw, path)
    write_atomic(path, raw, check_raw_config)
    return weights


async def _change(c: Console, s: Session, act: str, art: data.ArtifactRow, route: str, mutate: Any) -> Response:
    """Rewrite the file, reload in process, read the live weights back, audit; then show the page."""
    path = c.rt.config_path
    name, _ = canary_names(art.id, art.name, art.content_hash)
    target = f"{route}/{name}"
    if path is None:
        await c.audit(s, act, target, after={"refused": "embedded config, no file"}, ok=False)
        raise ConsoleError(409, NO_FILE)
    async with c.config_lock:  # one rewrite + reload at a time from this console
        before = _live(c, route)
        try:
            written = await asyncio.to_thread(_rewrite, path, mutate)
        except CanaryError as exc:
            await c.audit(s, act, target, before={"weights": before}, after={"error": str(exc)[:2000]}, ok=False)
            raise ConsoleError(400, str(exc)) from None
        result = await c.rt.reload("console")
        reloaded = bool(result.get("reloaded"))
        if not reloaded:  # the gateway kept its routes: put the file back so the two agree
            await asyncio.to_thread(restore_backup, path)
            await c.rt.reload("console: restored")
        after = _live(c, route)
    want = {k: v for k, v in written.items() if v > 0}
    took = reloaded and set(after) == set(want) and all(abs(after[k] - want[k]) <= 1e-3 for k in want)
    await c.audit(s, act, target, before={"weights": before},
                  after={"weights": after, "written": written, "model": art.id,
                         **({"reload_error": str(result.get("reason"))[:2000], "file": "restored from .bak"} if not reloaded else {})},
                  ok=took)
    if not reloaded:
        raise ConsoleError(409, f"The gateway could not load the change, so the config file was restored and live traffic "
                                f"is unchanged: {result.get('reason')}")
    if not took:
        raise ConsoleError(500, "The config was rewritten and reloaded, but the live weights differ from the ones written: live "
                                + ", ".join(f"{k}={v:g}" for k, v in after.items()) + "; written "
                                + ", ".join(f"{k}={v:g}" for k, v in want.items()))
    return RedirectResponse(f"{PATH}/registry/{art.id}?canary={act}#canary", status_code=303, headers=SECURITY_HEADERS)


def _form_model(c: Console, form: Form) -> tuple[data.ArtifactRow, str]:
    art = _model(c, form.get("artifact"))
    route = form.get("route").strip()
    if not route:
        raise ConsoleError(400, "Choose the route to deploy the canary on.")
    return art, route


async def deploy(c: Console, request: Request, s: Session, form: Form) -> Response:
    art, route = await asyncio.to_thread(_form_model, c, form)
    weight = _weight(form)
    why = servable(art)
    if why:
        await c.audit(s, "canary-deploy", f"{route}/{art.id}", after={"refused": why}, ok=False)
        raise ConsoleError(409, why)
    name, _ = canary_names(art.id, art.name, art.content_hash)
    entry = canary_target(art.id, art.name, art.content_hash, str(art.path), weight)
    return await _change(c, s, "canary-deploy", art, route, lambda raw, p: set_canary(raw, route, name, weight, p, entry))


async def set_weight(c: Console, request: Request, s: Session, form: Form) -> Response:
    art, route = await asyncio.to_thread(_form_model, c, form)
    promote = form.get("promote") == "1"
    weight = 100.0 if promote else _weight(form)
    name, _ = canary_names(art.id, art.name, art.content_hash)
    return await _change(c, s, "canary-promote" if promote else "canary-weight", art, route,
                         lambda raw, p: set_canary(raw, route, name, weight, p))


async def rollback(c: Console, request: Request, s: Session, form: Form) -> Response:
    art, route = await asyncio.to_thread(_form_model, c, form)
    name, _ = canary_names(art.id, art.name, art.content_hash)
    return await _change(c, s, "canary-rollback", art, route, lambda raw, p: remove_target(raw, route, name, p))


def routes(c: Console) -> list[tuple[str, list[str], Any]]:
    return [
        ("/canary/deploy", ["POST"], action(c, deploy, editor=True, name="canary-deploy")),
        ("/canary/weight", ["POST"], action(c, set_weight, editor=True, name="canary-weight")),
        ("/canary/rollback", ["POST"], action(c, rollback, editor=True, name="canary-rollback")),
    ]
