"""Put a registered model back behind the gateway as a canary, then promote it.

``deploy`` adds the model as a new weighted target of a route in the gateway
config YAML (provider ``local``, ``path`` = the registered model directory,
``variant`` = ``canary-<model id>``). ``promote`` moves more traffic to it,
but only when an AutoSxS report says the canary wins (the lower end of its
win-rate confidence interval is above 0.5), unless forced.

Weights are percentages of the route's traffic: deploying at ``--weight 5``
gives the canary 5 and rescales the other targets so they share the other 95
in their old proportions. The file is rewritten atomically (temp file in the
same directory + rename) after the new config has passed ``check_config`` (the caller's
validator: ``gatehouse registry deploy`` passes ``gateway.config.check_raw_config``; tuning
never imports the gateway), and the old file is kept as ``<file>.bak``.
YAML comments are not preserved by the rewrite (the ``.bak`` keeps them). The rewrite
itself (names, rescaling, validated atomic write) is ``gatehouse_core.canary``, which the
console's "Deploy as canary" form uses too.

The gateway reloads routes when the file changes (or on SIGHUP); with an admin
URL and key the change is also pushed with ``POST /admin/reload`` and then
verified: ``GET /admin/routes`` must show the route's live arms with the
weights just written, or the command fails. ``promote`` always verifies (it
needs the admin URL), so a promote that did not change live traffic is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatehouse_core.canary import (
    CanaryError,
    ConfigCheck,
    canary_names,
    canary_target,
    find_route,
    load_config,
    set_canary,
    write_atomic,
)
from tuning.registry import Registry, RegistryError

# the config rewrite is the bottom layer's (gatehouse_core.canary, shared with the console);
# its refusals are this module's errors
DeployError = CanaryError

__all__ = ["ConfigCheck", "DeployError", "DeployResult", "canary_names", "deploy", "promote", "win_rate_lower_bound"]


@dataclass(slots=True)
class DeployResult:
    config_path: str
    route: str
    target_name: str
    variant: str
    weight: float
    deployment_id: str | None
    reloaded: int | None  # HTTP status of /admin/reload, if called
    weights: dict[str, float]
    live: dict[str, float] | None = None  # weights read back from GET /admin/routes (verified equal)


def admin_reload(admin_url: str, admin_key: str, timeout: float = 120.0) -> int:
    import httpx

    try:
        resp = httpx.post(admin_url.rstrip("/") + "/admin/reload", headers={"Authorization": f"Bearer {admin_key}"}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DeployError(f"the config was written, but {admin_url} could not be reached to reload it: {exc}") from None
    if resp.status_code >= 300:
        raise DeployError(f"the config was written, but POST {admin_url}/admin/reload answered HTTP {resp.status_code}: {resp.text[:200]}")
    body = resp.json()
    if body.get("reloaded") is False:
        raise DeployError(f"the config was written, but the gateway did not reload it: {body.get('reason')}")
    return resp.status_code


def live_weights(admin_url: str, admin_key: str, route: str, timeout: float = 10.0) -> dict[str, float]:
    """The route's serving arms and their percent of traffic, read from ``GET /admin/routes``."""
    import httpx

    try:
        resp = httpx.get(admin_url.rstrip("/") + "/admin/routes", headers={"Authorization": f"Bearer {admin_key}"}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DeployError(f"cannot read the live weights from {admin_url}: {exc}") from None
    if resp.status_code >= 300:
        raise DeployError(f"GET {admin_url}/admin/routes answered HTTP {resp.status_code}: {resp.text[:200]}")
    arms = resp.json().get("routes", {}).get(route)
    if arms is None:
        raise DeployError(f"the gateway at {admin_url} serves no route {route!r}")
    return {a["target"]: float(a["weight"]) for a in arms}


def _push_and_verify(admin_url: str | None, admin_key: str | None, route: str, weights: dict[str, float]) -> tuple[int | None, dict[str, float] | None]:
    """Reload the gateway and check its live weights equal what was written (targets at 0% serve nothing)."""
    if not admin_url:
        return None, None
    if not admin_key:
        raise DeployError("--admin-url needs an admin key (--admin-key or $GATEHOUSE_ADMIN_KEY)")
    status = admin_reload(admin_url, admin_key)
    live = live_weights(admin_url, admin_key, route)
    want = {k: v for k, v in weights.items() if v > 0}
    if set(live) != set(want) or any(abs(live[k] - want[k]) > 1e-3 for k in want):
        raise DeployError(f"the gateway at {admin_url} did not take the change: live weights on {route!r} are "
                          + ", ".join(f"{k}={v:g}" for k, v in live.items()) + "; written "
                          + ", ".join(f"{k}={v:g}" for k, v in want.items()))
    return status, live


def deploy(
    model_id: str,
    route: str,
    weight: float,
    config_path: str | Path,
    *,
    registry: Registry,
    check_config: ConfigCheck,
    admin_url: str | None = None,
    admin_key: str | None = None,
) -> DeployResult:
    """Add (or re-weight) the canary target for a registered model on ``route``."""
    try:
        model = registry.resolve(model_id)
    except RegistryError as exc:
        raise DeployError(str(exc)) from None
    if model.kind != "model":
        raise DeployError(f"{model.id} is a {model.kind}, not a model")
    if not model.path or not (Path(model.path) / "config.json").exists():
        raise DeployError(f"{model.id} has no model directory with config.json (path={model.path})")
    cfg = Path(config_path)
    raw = load_config(cfg)
    name, variant = canary_names(model.id, model.name, model.content_hash)
    weights = set_canary(raw, route, name, weight, cfg, canary_target(model.id, model.name, model.content_hash, model.path, weight))
    write_atomic(cfg, raw, check_config)
    dep = registry.register(
        "deployment",
        name=f"{route}-{name}",
        metadata={"route": route, "target": name, "variant": variant, "weight": weight, "config": str(cfg.resolve()), "action": "deploy"},
        parents=[model.id],
    )
    status, live = _push_and_verify(admin_url, admin_key, route, weights)
    return DeployResult(str(cfg), route, name, variant, float(weight), dep.id, status, weights, live)


# -- promotion -------------------------------------------------------------------------------

_CI_KEYS = ("ci", "ci95", "win_rate_ci", "confidence_interval", "interval")
_LO_KEYS = ("ci_low", "ci_lower", "lower", "lo", "win_rate_ci_low")


def win_rate_lower_bound(report: Any, side: str = "A") -> tuple[float, float | None]:
    """(lower CI bound, point win rate) of the canary's win rate in an AutoSxS report.

    ``evaluators.sxs.run_sxs`` reports are read from
    ``summary.win_rate_a_ties_half`` (``{"value", "ci95": [lo, hi]}``); ``side``
    says whether the canary was answer A or B (for B the rate is ``1 - A``).
    Other accepted shapes (top level, then ``summary``/``result``), already from
    the canary's side: ``{"win_rate": 0.6, "ci": [0.55, 0.65]}``,
    ``{"win_rate_ci": [lo, hi]}``, ``{"win_rate": {"value": .6, "ci_low": .55}}``.
    """
    if not isinstance(report, dict):
        raise DeployError("the AutoSxS report must be a JSON object")
    if side not in ("A", "B"):
        raise DeployError("side must be A or B (which answer the canary gave in the AutoSxS run)")
    sxs = (report.get("summary") or {}).get("win_rate_a_ties_half") if isinstance(report.get("summary"), dict) else None
    if isinstance(sxs, dict) and isinstance(sxs.get("ci95"), list | tuple) and None not in sxs["ci95"]:
        lo, hi = (float(x) for x in sxs["ci95"])
        value = sxs.get("value")
        if side == "A":
            return lo, value
        return 1.0 - hi, (1.0 - value) if value is not None else None
    for scope in (report, report.get("summary"), report.get("result"), report.get("win_rate")):
        if not isinstance(scope, dict):
            continue
        point = scope.get("win_rate", scope.get("value"))
        point = float(point) if isinstance(point, int | float) else None
        for k in _CI_KEYS:
            v = scope.get(k)
            if isinstance(v, list | tuple) and len(v) == 2:
                return float(v[0]), point
            if isinstance(v, dict):
                for lk in _LO_KEYS:
                    if lk in v:
                        return float(v[lk]), point
        for lk in _LO_KEYS:
            if lk in scope:
                return float(scope[lk]), point
    raise DeployError("no win-rate confidence interval in the report (expected e.g. {'win_rate': .6, 'ci': [lo, hi]})")


def promote(
    model_id: str,
    route: str,
    weight: float,
    config_path: str | Path,
    *,
    registry: Registry,
    check_config: ConfigCheck,
    report_path: str | Path | None,
    side: str = "A",
    force: bool = False,
    admin_url: str | None = None,
    admin_key: str | None = None,
    verify: bool = True,
) -> DeployResult:
    """Move ``weight`` percent of ``route`` to an already deployed canary if the report says it wins.

    Verified: without ``admin_url`` nothing is written (``verify=False`` only rewrites the file)."""
    model = registry.resolve(model_id)
    lower, point = (None, None)
    report_art = None
    if report_path is not None:
        report = json.loads(Path(report_path).read_text(encoding="utf-8"))
        lower, point = win_rate_lower_bound(report, side)
        report_art = registry.register("eval_report", report_path, name=f"sxs-{model.name}", parents=[model.id])
    if not force:
        if lower is None:
            raise DeployError("promotion needs an AutoSxS report (--report FILE) or --force")
        if lower <= 0.5:
            raise DeployError(
                f"refusing to promote {model.id}: win-rate CI lower bound {lower:.3f} does not exceed 0.5"
                f" (win rate {point if point is not None else '?'}); collect more comparisons or use --force"
            )
    if verify and not admin_url:
        raise DeployError("promote verifies the live weights through the admin API: pass --admin-url "
                          "(or $GATEHOUSE_ADMIN_URL) and --admin-key, or --no-verify to only rewrite the file")
    cfg = Path(config_path)
    raw = load_config(cfg)
    name, variant = canary_names(model.id, model.name, model.content_hash)
    if not any(t.get("name") == name for t in find_route(raw, route, cfg).get("targets") or []):
        raise DeployError(f"{model.id} is not deployed on route {route!r}; run `gatehouse registry deploy` first")
    weights = set_canary(raw, route, name, weight, cfg)
    write_atomic(cfg, raw, check_config)
    parents = [model.id] + ([report_art.id] if report_art else [])
    dep = registry.register(
        "deployment",
        name=f"{route}-{name}-promote",
        metadata={
            "route": route, "target": name, "variant": variant, "weight": weight, "config": str(cfg.resolve()),
            "action": "promote", "forced": force, "ci_low": lower, "win_rate": point,
        },
        parents=parents,
    )
    status, live = _push_and_verify(admin_url, admin_key, route, weights)
    return DeployResult(str(cfg), route, name, variant, float(weight), dep.id, status, weights, live)
