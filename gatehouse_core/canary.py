"""Canary targets in a gateway config file: naming, weight rescaling, the validated atomic rewrite.

Shared by ``gatehouse registry deploy`` / ``promote`` (``tuning/deploy.py``) and the console's
"Deploy as canary" form (``gateway/console/pages_canary.py``), so both write the same file the
same way. Pure: it knows the config's YAML shape (``routes[].targets[]``) but imports nothing of
Gatehouse; the caller passes the validator (the gateway's ``gateway.config.check_raw_config``).

Weights are percentages of a route's traffic: giving the canary 5 rescales the other targets so
they share the other 95 in their old proportions. The file is rewritten atomically (temp file in
the same directory, fsync, rename) after the new mapping has passed the check, and the previous
file is kept as ``<file>.bak``. YAML comments are not preserved by the rewrite (the ``.bak``
keeps them); ``${VAR}`` references are kept as written.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gatehouse_core.files import atomic_write

CANARY_PREFIX = "canary-"


class CanaryError(Exception):
    """The change was refused or could not be written (the message says why and what to do)."""


# validates a rewritten config mapping (from the file at the given path) before it is
# written; raises with a message that says what is wrong
ConfigCheck = Callable[[dict[str, Any], Path], None]


def canary_names(model_id: str, model_name: str, content_hash: str) -> tuple[str, str]:
    """(target name, variant label) for a registered model's canary target."""
    return f"{CANARY_PREFIX}{model_name}-{content_hash[:12]}", f"{CANARY_PREFIX}{model_id}"


def canary_target(model_id: str, model_name: str, content_hash: str, model_path: str, weight: float) -> dict[str, Any]:
    """The config entry of a model's canary: an in-process ``local`` chat target."""
    name, variant = canary_names(model_id, model_name, content_hash)
    return {"name": name, "provider": "local", "model": model_name, "path": model_path, "kind": "chat",
            "weight": float(weight), "variant": variant}


def check_weight(weight: float) -> float:
    if not 0 <= weight <= 100:
        raise CanaryError(f"weight is a percentage of the route's traffic; got {weight}, use 0..100")
    return float(weight)


def rescale(targets: list[dict[str, Any]], keep: str, weight: float) -> None:
    """Give target ``keep`` ``weight`` percent; the others share ``100 - weight`` proportionally."""
    check_weight(weight)
    others = [t for t in targets if t.get("name") != keep]
    total = sum(float(t.get("weight", 1.0)) for t in others)
    for t in others:
        share = float(t.get("weight", 1.0)) / total if total > 0 else 1.0 / max(len(others), 1)
        t["weight"] = round(share * (100.0 - weight), 6)
    for t in targets:
        if t.get("name") == keep:
            t["weight"] = float(weight)


def load_config(config_path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CanaryError(f"cannot read {config_path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CanaryError(f"{config_path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise CanaryError(f"{config_path}: the config must be a YAML mapping")
    return raw


def find_route(raw: dict[str, Any], route: str, config_path: Path) -> dict[str, Any]:
    for r in raw.get("routes") or []:
        if isinstance(r, dict) and r.get("name") == route:
            return r
    names = [r.get("name") for r in raw.get("routes") or [] if isinstance(r, dict)]
    raise CanaryError(f"{config_path}: no route {route!r}; routes are: {', '.join(map(str, names)) or '(none)'}")


def _named_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = list(r.get("targets") or [])
    for t in targets:  # make every arm addressable by name for later rescaling
        t.setdefault("name", f"{t.get('provider')}:{t.get('model')}")
    return targets


def set_canary(raw: dict[str, Any], route: str, name: str, weight: float, config_path: Path,
               new_target: dict[str, Any] | None = None) -> dict[str, float]:
    """Give target ``name`` of ``route`` ``weight`` percent, adding ``new_target`` if it is not
    there yet (without one, the target must exist). Rewrites ``raw`` in place; returns the weights."""
    check_weight(weight)
    r = find_route(raw, route, config_path)
    targets = _named_targets(r)
    if not any(t.get("name") == name for t in targets):
        if new_target is None:
            raise CanaryError(f"no target {name!r} on route {route!r}; deploy it first")
        targets.append(dict(new_target))
    rescale(targets, name, weight)
    r["targets"] = targets
    return {t["name"]: t["weight"] for t in targets}


def remove_target(raw: dict[str, Any], route: str, name: str, config_path: Path) -> dict[str, float]:
    """Take target ``name`` off ``route`` (a roll back); the others share 100 in their old proportions."""
    r = find_route(raw, route, config_path)
    targets = _named_targets(r)
    rest = [t for t in targets if t.get("name") != name]
    if len(rest) == len(targets):
        raise CanaryError(f"no target {name!r} on route {route!r}")
    if not rest:
        raise CanaryError(f"{name!r} is the only target of route {route!r}; removing it would leave the route empty")
    if sum(float(t.get("weight", 1.0)) for t in rest) <= 0:  # everything was on the canary: share equally
        for t in rest:
            t["weight"] = 1.0
    rescale(rest, "", 0.0)
    r["targets"] = rest
    return {t["name"]: t["weight"] for t in rest}


def route_targets(raw: dict[str, Any], route: str, config_path: Path) -> list[dict[str, Any]]:
    return [t for t in find_route(raw, route, config_path).get("targets") or [] if isinstance(t, dict)]


def write_atomic(config_path: Path, raw: dict[str, Any], check_config: ConfigCheck) -> None:
    """Validate exactly what will be written, keep ``<file>.bak``, then replace the file atomically."""
    try:
        check_config(raw, config_path)
    except Exception as exc:
        raise CanaryError(f"the rewritten config would not load:\n{exc}") from None
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    shutil.copy2(config_path, config_path.with_name(config_path.name + ".bak"))
    atomic_write(config_path, text, mode=config_path.stat().st_mode & 0o777)


def restore_backup(config_path: Path) -> None:
    """Put ``<file>.bak`` back (atomically), e.g. when the gateway could not load a rewrite."""
    bak = config_path.with_name(config_path.name + ".bak")
    atomic_write(config_path, bak.read_bytes(), mode=bak.stat().st_mode & 0o777)
