"""``Runtime``: everything the request path needs, built in the app's lifespan.

The upstream HTTP client, the router (providers, breakers), the stages, the key store,
the rate limiter and the traffic log are built once at startup, hung here and closed on
shutdown. Stages and feature routes are imported explicitly: a feature that fails to
import is a startup error, never a silently missing endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from gateway import moderations
from gateway.config import ConfigError, Settings, load_settings
from gateway.cost import Meter
from gateway.guard_routes import RouteGuardTransport
from gateway.keys import ConfigKeyStore, KeyStore
from gateway.metrics import Metrics
from gateway.providers import build_provider
from gateway.reloader import ConfigReloader
from gateway.response_store import build_response_store
from gateway.routing import Arm, CircuitBreaker, Route, Router
from gateway.services import Services
from gateway.trafficlog import TrafficLog, build_sink
from gateway.types import Stage

if TYPE_CHECKING:
    from gateway.tracing import Tracing
from gateway import cache, feedback_routes, grounding, guardrails, keys, prompts, ratelimit
from gateway.prompts import admin as prompts_admin

log = logging.getLogger("gatehouse")

async def loop_run(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


# stage factories in request order (on_request in this order, on_response/stream_filter reversed)
STAGE_BUILDERS: tuple[Callable[[Services], Awaitable[Stage | None]], ...] = (
    prompts.build_stage, grounding.build_stage, cache.build_stage, guardrails.build_stage,
)
# feature routes mounted on the app's router after startup (admin, feedback, keys)
ROUTE_BUILDERS: tuple[Callable[[Any], Awaitable[list[Any]]], ...] = (
    prompts_admin.routes, feedback_routes.routes, keys.routes,
)


class Runtime:
    """Everything the request path needs, built in the lifespan."""

    def __init__(self, settings: Settings, config_path: Path | None, transport: httpx.AsyncBaseTransport | None,
                 span_exporter: Any = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.metrics = Metrics()
        self.services = Services(settings=settings, metrics=self.metrics, config_path=config_path)
        self.services.guard = RouteGuardTransport(lambda: self.router)  # guard tiers ask our own routes
        self._transport = transport
        self.client: httpx.AsyncClient | None = None
        self.router = Router({}, self.metrics)
        self.meter = Meter(settings, self.metrics)
        self.tracing: Tracing | None = None
        if settings.tracing.endpoint is not None or span_exporter is not None:
            from gateway.tracing import build_tracing

            self.tracing = build_tracing(settings, self.metrics, span_exporter)
        self.stages: list[Stage] = []
        self.keys: KeyStore = ConfigKeyStore.from_settings(settings.auth)  # replaced at startup
        self.limiter: Any = None
        self.budgets: Any = None  # gateway.budgets.Budgets, built at startup
        self.responses: Any = None  # gateway.response_store.ResponseStore, built at startup
        self.policy_source: Any = None  # the stage that knows the live policy version
        self.traffic: TrafficLog | None = None
        self.log_bodies = settings.traffic_log.log_bodies
        self.started = False
        self.extra_routes: list[Any] = []
        self.moderator: Any = None  # gateway.moderations.Moderator, built at startup
        self._breakers: dict[str, CircuitBreaker] = {}
        self._providers: dict[str, Any] = {}  # target fingerprint -> provider, for the live routes
        self._retired: list[Any] = []  # providers replaced by a reload
        self.reloader: ConfigReloader | None = None
        self._bg: list[asyncio.Task[Any]] = []
        self.on_shutdown: list[Any] = []  # close hooks registered by feature modules

    # ---- lifecycle ------------------------------------------------------------------
    async def startup(self) -> None:
        s = self.settings
        if s.redis.url:
            import redis.asyncio as aioredis

            self.services.redis = aioredis.from_url(s.redis.url)
        self.client = self._make_client()
        from evaluators import embedding

        # before any embedder is built (local providers, safety, grounding): one runtime for all
        embedding.configure(s.embedding.runtime, s.server.model_threads,
                            s.resolve_path(s.embedding.cache_dir) if s.embedding.cache_dir else None)
        await self.build_router(s)
        await loop_run(self.meter.load)  # the estimating tokenizer, when any target has a price
        self.traffic = TrafficLog(build_sink(s.traffic_log, s, self.services.redis), self.metrics,
                                  s.traffic_log.queue_size, s.traffic_log.batch_size, s.traffic_log.log_bodies,
                                  s.traffic_log.max_record_bytes)
        self.traffic.start()
        self.keys = await self._build_keys()
        self.on_shutdown.append(self.keys.aclose)
        self.limiter = await self._build_limiter()
        from gateway.budgets import build_budgets

        self.budgets = build_budgets(s, self.services.redis, self.meter, self.metrics)
        self.stages = await self._build_stages()
        self.responses = build_response_store(s, self.services.redis)  # /v1/responses with store: true
        self.on_shutdown.append(self.responses.aclose)
        self.moderator = await moderations.build(self)  # /v1/moderations: the guardrails' scorer when loaded
        if self.tracing is not None:  # a span around each stage hook (only when tracing is on)
            self.stages = self.tracing.wrap_stages(self.stages)
        if "torch" in sys.modules:  # a stage or provider runs a model in process
            sys.modules["torch"].set_num_threads(s.server.model_threads)
        self.policy_source = next((st for st in self.stages if hasattr(st, "policy_version")), None)
        await self._mount_feature_routes()
        from gateway.loopwatch import LoopLagMonitor

        lag = self.metrics.gauge("event_loop_lag_seconds", "Worst event-loop wake-up delay in the last 30 s (sampled every 0.1 s)", ())
        self.loop_lag = LoopLagMonitor(lag)
        self._bg.append(asyncio.get_running_loop().create_task(self.loop_lag.run(), name="loop-lag"))
        if self.config_path is not None:
            self.reloader = ConfigReloader(self.config_path, self._apply_reload)
            self._bg.append(asyncio.get_running_loop().create_task(self.reloader.watch(), name="config-watch"))
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        self.started = True

    def _on_sighup(self) -> None:
        if self.reloader is not None:
            self.reloader.request("sighup")
        else:
            self._reload_stages()

    def _reload_stages(self) -> None:
        """Let stages reload their own files (policies) too, whatever triggered the reload."""
        for stage in self.stages:
            hook = getattr(stage, "on_sighup", None)
            if hook is not None:
                hook()

    async def shutdown(self) -> None:
        for t in self._bg:
            t.cancel()
        if self.reloader is not None:
            await self.reloader.aclose()
        if self.limiter is not None:
            await self.limiter.aclose()
        for stage in self.stages:
            closer = getattr(stage, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        if self.traffic is not None:
            await self.traffic.aclose(self.settings.server.shutdown_timeout)
        for hook in self.on_shutdown:
            with contextlib.suppress(Exception):
                res = hook()
                if asyncio.iscoroutine(res):
                    await res
        for p in [*self._providers.values(), *self._retired]:
            with contextlib.suppress(Exception):
                await p.aclose()
        if self.client is not None:
            await self.client.aclose()
        if self.tracing is not None:
            with contextlib.suppress(Exception):
                await loop_run(self.tracing.shutdown)  # flushes the span queue
        if self.services.redis is not None:
            with contextlib.suppress(Exception):
                await self.services.redis.aclose()

    def _make_client(self) -> httpx.AsyncClient:
        s = self.settings.server
        limits = httpx.Limits(max_connections=s.max_connections, max_keepalive_connections=s.max_connections)
        if self._transport is not None:
            return httpx.AsyncClient(transport=self._transport)
        if s.http_transport == "aiohttp":
            from httpx_aiohttp import AiohttpTransport

            return httpx.AsyncClient(transport=AiohttpTransport(limits=limits, trust_env=False))
        return httpx.AsyncClient(limits=limits, trust_env=False)

    async def build_router(self, settings: Settings) -> None:
        """(Re)build routes; breakers and loaded providers of unchanged targets are kept."""
        assert self.client is not None
        routes: dict[str, Route] = {}
        providers: dict[str, Any] = {}
        for rs in settings.routes:
            arms = [self._arm(t, providers) for t in rs.targets]
            fallbacks = [self._arm(t, providers) for t in rs.fallbacks]
            routes[rs.name] = Route(rs, arms, fallbacks)
        loop = asyncio.get_running_loop()
        for p in providers.values():
            load = getattr(p, "load", None)
            if load is not None and not await p.ready():
                await loop.run_in_executor(None, load)
        # providers of removed or changed targets leave /readyz now and are closed at shutdown
        # (requests still in flight on the old router may be using them)
        self._retired += [p for fp, p in self._providers.items() if fp not in providers]
        self._providers = providers
        self.router = Router(routes, self.metrics, self.tracing)
        self.meter.reload(settings)
        if self.tracing is not None:
            self.tracing.reload(settings)

    def _arm(self, target: Any, providers: dict[str, Any]) -> Arm:
        key = target.key
        # model_dump_json masks secrets: add the key's hash, so a rotated api_key gets a new provider
        secret = target.api_key.get_secret_value() if target.api_key is not None else ""
        fingerprint = f"{key}|{target.model_dump_json()}|{hashlib.sha256(secret.encode()).hexdigest()}"
        prov = self._providers.get(fingerprint) or providers.get(fingerprint)
        if prov is None:
            prov = build_provider(target, self.client)  # type: ignore[arg-type]
        providers[fingerprint] = prov
        if key not in self._breakers:
            gauge = self.metrics.circuit_open.labels(key)
            gauge.set(0)

            def on_change(is_open: bool, g: Any = gauge) -> None:
                g.set(1 if is_open else 0)

            self._breakers[key] = CircuitBreaker(target.circuit.failures, target.circuit.reset_seconds, on_change)
        return Arm(target, prov, self._breakers[key], target.variant or key)

    async def _build_keys(self) -> KeyStore:
        return keys.build_key_store(self.settings, self.services.redis)

    async def _build_limiter(self) -> Any:
        # always built: keys may carry their own `limit:` scopes; a caller without
        # limits never touches Redis
        limiter = await ratelimit.build_limiter(self.services)
        limiter.start()  # pings Redis so gatehouse_redis_up stays fresh when idle
        return limiter

    async def _build_stages(self) -> list[Stage]:
        stages: list[Stage] = []
        for build_stage in STAGE_BUILDERS:
            stage = await build_stage(self.services)
            if stage is not None:
                stages.append(stage)
        return stages

    async def _mount_feature_routes(self) -> None:
        """Admin and feedback routes contributed by feature modules."""
        for routes in ROUTE_BUILDERS:
            self.extra_routes.extend(await routes(self))

    # ---- config reload ------------------------------------------------------------------
    async def reload(self, reason: str = "admin") -> dict[str, Any]:
        """Re-read the config file's routes (e.g. a canary deploy); keep the old ones on error.

        File watching, SIGHUP and ``POST /admin/reload`` all come here, through one ``ConfigReloader``."""
        if self.reloader is None:
            self._reload_stages()
            return {"reloaded": False, "reason": "no config file (started with embedded settings)", "routes": self.live_weights()}
        return await self.reloader.reload(reason)

    async def _apply_reload(self, reason: str) -> dict[str, Any]:
        assert self.config_path is not None
        self._reload_stages()
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("config reload (%s) failed, keeping the running routes: %s", reason, exc)
            return {"reloaded": False, "reason": str(exc), "routes": self.live_weights()}
        await self.build_router(new)
        log.info("config reloaded (%s): %d routes", reason, len(self.router.routes))
        return {"reloaded": True, "routes": self.live_weights()}

    def live_weights(self) -> dict[str, list[dict[str, Any]]]:
        """Per route, the arms that serve traffic now and their share in percent."""
        out: dict[str, list[dict[str, Any]]] = {}
        for name, route in sorted(self.router.routes.items()):
            total = sum(a.target.weight for a in route.arms) or float(len(route.arms))
            out[name] = [{"target": a.name, "variant": a.variant,
                          "weight": round(100.0 * (a.target.weight or (total / len(route.arms))) / total, 6)} for a in route.arms]
        return out
