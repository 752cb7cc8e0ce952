"""Gateway configuration: one YAML file, parsed strictly, once.

Phase 1: YAML -> pydantic models with ``extra="forbid"``, so a typo is an error
with its path (``routes[1].targets[0].base_url``) and a hint. ``${ENV_VAR}``
references are substituted from the environment before validation and secret
fields are ``SecretStr`` so they never reach a log line or ``repr``.
Phase 2: ``Settings`` is frozen; the app builds its runtime objects from it.

Environment variables read by the gateway (all optional):

- ``GATEHOUSE_CONFIG``: config file used by ``gatehouse serve`` without ``--config``.
- ``GATEHOUSE_API_KEYS``: extra ``key=tenant`` pairs, comma separated (demo / quick starts).
- ``GATEHOUSE_ADMIN_KEY``: the admin key for ``/admin/`` when ``admin.key`` is unset.
- ``PROMETHEUS_MULTIPROC_DIR``: set by ``serve --workers N`` for multiprocess metrics.
- any ``${NAME}`` the config file references.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

# shared with evaluators and tuning, so they live in the bottom layer
from gatehouse_core.settings import SafetySettings as SafetySettings
from gatehouse_core.settings import Strict


class ServerSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # transport for upstream HTTP: "aiohttp" (httpx API over aiohttp's pool) or "httpx"
    http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    max_connections: int = Field(512, ge=1)
    # intra-op threads for in-process models (torch, ONNX Runtime). One thread per model leaves the
    # other cores to the event loop; measured faster on small shared boxes (docs/benchmarks.md)
    model_threads: int = Field(1, ge=1, le=256)
    shutdown_timeout: float = Field(10.0, ge=0)


class LimitSettings(Strict):
    """Caps on one request (gateway/limits.py); each answers 400/413/431 in the error shape."""

    max_messages: int = Field(1024, ge=1)  # chat messages per request
    max_inputs: int = Field(2048, ge=1)  # embeddings inputs / completions prompts / content parts
    max_text_chars: int = Field(200_000, ge=1)  # characters per checked text (message, part, input)
    max_json_depth: int = Field(64, ge=4, le=200)  # nesting of any JSON field (serialisers stop at 255)
    max_model_chars: int = Field(256, ge=1)
    max_header_bytes: int = Field(16 * 1024, ge=1024)  # all request headers together
    max_control_body_bytes: int = Field(1024 * 1024, ge=1024)  # admin, feedback, keys: every non-inference endpoint
    # texts one request may send through the guardrail checks (turns, parts, inputs together): size it
    # to what the scorer checks within the check timeout (docs/operations.md); past it: 400 limit_exceeded
    max_checked_texts: int = Field(4096, ge=1)
    # texts in guardrail checks at once (all requests); past it new requests get 503 + Retry-After
    guardrail_capacity: int = Field(256, ge=1)
    retry_after_seconds: int = Field(1, ge=1)


class ApiKey(Strict):
    id: str
    tenant: str
    key: SecretStr | None = None  # plain key (from ${ENV}); hashed at load
    key_sha256: str | None = None  # or its sha256 hex digest
    models: tuple[str, ...] = ("*",)
    policy: str | None = None
    scopes: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of `key` (e.g. ${MY_KEY}) or `key_sha256`")
        return self


class AuthSettings(Strict):
    keys: tuple[ApiKey, ...] = ()
    # open paths besides /healthz and /readyz
    public_metrics: bool = True
    # key store: "config" (keys above only) or "redis" (keys managed by `gatehouse keys`)
    store: Literal["config", "redis", "sqlite"] = "config"
    sqlite_path: str = ".gatehouse/keys.db"


class AdminSettings(Strict):
    key: SecretStr | None = None


class Timeouts(Strict):
    connect: float = Field(5.0, gt=0)
    first_token: float = Field(30.0, gt=0)  # until response headers / first stream chunk
    total: float = Field(120.0, gt=0)


class CircuitSettings(Strict):
    failures: int = Field(5, ge=1)  # consecutive failures that open the breaker
    reset_seconds: float = Field(30.0, gt=0)  # open -> half-open after this


class RetrySettings(Strict):
    attempts: int = Field(2, ge=0, le=10)  # retries per target after the first try
    backoff_base: float = Field(0.1, ge=0)
    backoff_max: float = Field(2.0, ge=0)
    honour_retry_after_max: float = Field(10.0, ge=0)


Capability = Literal["chat", "completions", "embeddings", "streaming", "moderations"]


class PriceSettings(Strict):
    """What a target charges, per million tokens (``gateway.cost``)."""

    input: float = Field(ge=0)  # per 1M prompt tokens
    output: float = Field(0.0, ge=0)  # per 1M completion tokens
    cached_input: float | None = Field(None, ge=0)  # per 1M cached prompt tokens (default: input price)
    currency: str = Field("USD", min_length=1)


class TargetSettings(Strict):
    """A concrete model behind a route: a provider plus how to reach it."""

    name: str | None = None  # unique; default "<provider>:<model>"
    provider: Literal["openai", "anthropic", "mock", "local"]
    model: str  # the provider's model name (mock: behaviour, local: a label)
    base_url: str | None = None  # openai
    api_key: SecretStr | None = None  # openai; usually ${ENV}
    headers: dict[str, str] = Field(default_factory=dict)
    path: str | None = None  # local: model directory (default: bundled MiniLM for embeddings)
    kind: Literal["chat", "embeddings"] = "chat"  # local
    weight: float = Field(1.0, ge=0)
    variant: str | None = None  # A/B arm label; default = target name
    timeouts: Timeouts = Timeouts()
    circuit: CircuitSettings = CircuitSettings()
    capabilities: tuple[Capability, ...] | None = None
    owned_by: str | None = None
    price: PriceSettings | None = None  # cost per request (gateway.cost); none: cost not computed

    @model_validator(mode="after")
    def _check_provider_fields(self) -> TargetSettings:
        if self.provider == "anthropic" and not self.base_url:
            raise ValueError("provider `anthropic` needs `base_url` (e.g. https://api.anthropic.com/v1)")
        if self.provider == "openai" and not self.base_url:
            raise ValueError("provider `openai` needs `base_url` (e.g. http://127.0.0.1:8000/v1)")
        if self.base_url and not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        return self

    @property
    def key(self) -> str:
        return self.name or f"{self.provider}:{self.model}"


class RouteSettings(Strict):
    """A public model name, its weighted targets (A/B arms) and ordered fallbacks."""

    name: str
    targets: tuple[TargetSettings, ...] = Field(min_length=1)
    fallbacks: tuple[TargetSettings, ...] = ()
    retries: RetrySettings = RetrySettings()
    sticky: bool = True  # same caller key -> same arm
    owner: str = "gatehouse"
    description: str | None = None
    # stages for this route (names resolved by the app): prompt/grounding/policy options
    prompt: str | None = None  # "id", "id@version" or "id:label" pinned for this route
    grounding: dict[str, Any] | None = None
    cache: bool = False


class TrafficLogSettings(Strict):
    sink: Literal["jsonl", "redis", "none"] = "jsonl"
    path: str = "logs/traffic.jsonl"
    max_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    backups: int = Field(5, ge=0)
    stream: str = "gatehouse:traffic"
    maxlen: int = Field(1_000_000, ge=1)
    queue_size: int = Field(10_000, ge=1)
    batch_size: int = Field(256, ge=1)
    log_bodies: bool = False
    # a record (one JSON line) over this loses its bodies, then its largest fields, to a
    # marker; counted in gatehouse_traffic_records_truncated_total
    max_record_bytes: int = Field(256 * 1024, ge=4096)


class RedisSettings(Strict):
    url: str | None = None  # e.g. redis://127.0.0.1:6379/0
    key_prefix: str = "gatehouse:"


class PolicySettings(Strict):
    paths: tuple[str, ...] = ()  # policy YAML files or directories
    reload: bool = True  # watch files and SIGHUP
    poll_seconds: float = Field(1.0, gt=0)
    default_policy: str | None = None


class ModerationSettings(Strict):
    """``POST /v1/moderations`` (gateway/moderations.py): when a taxonomy category is flagged."""

    threshold: float = Field(0.5, ge=0, le=1)
    thresholds: dict[str, float] = Field(default_factory=dict)  # category -> threshold, overriding `threshold`

    @field_validator("thresholds")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        from evaluators.safety.taxonomy import ALL_CATEGORIES

        for c, t in v.items():
            if c not in ALL_CATEGORIES:
                raise ValueError(f"unknown category {c!r}; categories: {', '.join(sorted(ALL_CATEGORIES))}")
            if not 0 <= t <= 1:
                raise ValueError(f"threshold for {c!r} must be within [0, 1]")
        return v


class RecitationSettings(Strict):
    index: str | None = None  # directory written by `gatehouse recitation build`


class PromptSettings(Strict):
    store: Literal["sqlite", "redis"] = "sqlite"
    sqlite_path: str = ".gatehouse/prompts.db"


class EmbeddingSettings(Strict):
    # the sentence-embedding runtime shared by safety, grounding and local embeddings:
    # onnx-int8 (default, fastest on CPU), onnx (fp32, torch-identical vectors) or torch
    runtime: Literal["onnx-int8", "onnx", "torch"] = "onnx-int8"
    cache_dir: str | None = None  # exported ONNX files (default: $GATEHOUSE_CACHE_DIR or ~/.cache/gatehouse)


class GroundingSettings(Strict):
    indexes: dict[str, str] = Field(default_factory=dict)  # name -> index directory
    embedder: str | None = None  # sentence-transformers dir (default bundled MiniLM)


class RateLimitSettings(Strict):
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    concurrent: int | None = Field(None, ge=1)
    on_redis_error: Literal["closed", "open"] = "closed"


class CostSettings(Strict):
    header: bool = False  # send `x-gatehouse-cost` on whole (non-streamed) replies
    # tokenizer.json used to estimate tokens when an upstream reports no usage (default: bundled MiniLM's)
    tokenizer: str | None = None


class BudgetLimit(Strict):
    """A spend limit set in the config; managed ones live in Redis (`gatehouse keys budget`)."""

    scope: Literal["key", "tenant"]
    id: str = Field(min_length=1)  # key id or tenant name
    period: Literal["day", "month"]
    amount: float = Field(gt=0)  # in the price tables' currency
    model: str | None = None  # only requests for this public model count (and are limited)


class BudgetSettings(Strict):
    limits: tuple[BudgetLimit, ...] = ()
    soft_thresholds: tuple[float, ...] = (0.8,)  # fractions of a limit that emit a metric and a log event
    on_redis_error: Literal["closed", "open"] = "closed"
    # a hold on admission: the request's cost estimate (prompt + max_tokens at the route's dearest price)
    default_max_tokens: int = Field(256, ge=1)  # output tokens assumed when a request sets none

    @field_validator("soft_thresholds")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < t < 1 for t in v):
            raise ValueError("soft_thresholds are fractions of the limit, each in (0, 1), e.g. [0.8]")
        return tuple(sorted(v))


class TracingSettings(Strict):
    """OpenTelemetry traces (``gateway.tracing``); off unless ``endpoint`` is set."""

    endpoint: str | None = None  # OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces
    headers: dict[str, str] = Field(default_factory=dict)  # e.g. an auth header for a hosted backend
    sample_ratio: float = Field(1.0, ge=0, le=1)  # of new traces; an incoming traceparent's decision is kept
    service_name: str = "gatehouse"
    export_timeout: float = Field(10.0, gt=0)
    max_queue_size: int = Field(2048, ge=1)

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if not v:
            return None  # "" (e.g. an unset ${OTLP_ENDPOINT:-}) keeps tracing off
        if not re.match(r"^https?://", v):
            raise ValueError(f"tracing.endpoint must be an http(s) URL (OTLP/HTTP), got {v!r}")
        return v


class CacheSettings(Strict):
    ttl_seconds: int = Field(3600, ge=1)


class ResponsesSettings(Strict):
    """``POST /v1/responses`` with ``store: true``: where responses are kept, per tenant."""

    store: Literal["sqlite", "redis"] = "sqlite"
    sqlite_path: str = ".gatehouse/responses.db"
    ttl_seconds: int = Field(30 * 24 * 3600, ge=60)


class RegistrySettings(Strict):
    path: str = ".gatehouse/registry"


class ConsoleUser(Strict):
    """A console user kept in the config (auth.store: config); its password as an scrypt hash
    (``gatehouse console hash-password``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
    role: Literal["viewer", "editor"] = "viewer"
    tenant: str | None = None  # set: the user sees only this tenant's traffic
    password_hash: str = Field(pattern=r"^scrypt\$")


class ConsoleSettings(Strict):
    """The web console at /console (gateway.console); off unless enabled."""

    enabled: bool = False
    session_ttl_seconds: int = Field(8 * 3600, ge=60, le=7 * 24 * 3600)
    # Secure cookies: browsers keep them on https and on http://localhost / 127.0.0.1
    cookie_secure: bool = True
    db_path: str = ".gatehouse/console.db"  # sessions and the append-only audit log
    reports_dir: str = "reports"  # evaluation reports (`gatehouse eval ... --report-dir`)
    max_form_bytes: int = Field(256 * 1024, ge=1024)
    traffic_scan: int = Field(20_000, ge=100)  # newest records the traffic page filters
    users: tuple[ConsoleUser, ...] = ()


class Settings(Strict):
    server: ServerSettings = ServerSettings()
    limits: LimitSettings = LimitSettings()
    auth: AuthSettings = AuthSettings()
    admin: AdminSettings = AdminSettings()
    redis: RedisSettings = RedisSettings()
    routes: tuple[RouteSettings, ...] = ()
    traffic_log: TrafficLogSettings = TrafficLogSettings()
    policies: PolicySettings = PolicySettings()
    safety: SafetySettings = SafetySettings()
    moderations: ModerationSettings = ModerationSettings()
    recitation: RecitationSettings = RecitationSettings()
    prompts: PromptSettings = PromptSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    grounding: GroundingSettings = GroundingSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    cache: CacheSettings = CacheSettings()
    registry: RegistrySettings = RegistrySettings()
    responses: ResponsesSettings = ResponsesSettings()
    cost: CostSettings = CostSettings()
    budgets: BudgetSettings = BudgetSettings()
    tracing: TracingSettings = TracingSettings()
    console: ConsoleSettings = ConsoleSettings()
    # where relative paths in this file are resolved from (set by the loader)
    base_dir: str = "."

    @field_validator("routes")
    @classmethod
    def _unique_names(cls, routes: tuple[RouteSettings, ...]) -> tuple[RouteSettings, ...]:
        seen: set[str] = set()
        for r in routes:
            if r.name in seen:
                raise ValueError(f"route name {r.name!r} is defined twice")
            seen.add(r.name)
        currencies = {t.price.currency for r in routes for t in (*r.targets, *r.fallbacks) if t.price is not None}
        if len(currencies) > 1:
            raise ValueError(f"price tables use one currency (costs and budgets add up across targets); got {sorted(currencies)}")
        return routes

    def resolve_path(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else Path(self.base_dir) / path


class ConfigError(Exception):
    """The config file is wrong; ``problems`` lists each as 'path: message'."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute_env(node: Any, path: str, problems: list[str]) -> Any:
    if isinstance(node, str):
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.append(f"{path or '<root>'}: environment variable ${{{name}}} is not set (use ${{{name}:-default}} for a default)")
            return ""

        return _ENV_RE.sub(repl, node)
    if isinstance(node, dict):
        return {k: _substitute_env(v, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    return node


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("function-", "tagged-union")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for 'did you mean' hints)."""
    model: Any = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        # unwrap tuple[X, ...] / X | None
        for _ in range(3):
            args = getattr(ann, "__args__", None)
            if args and not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                ann = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        model = ann
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def format_validation_error(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _loc_to_path(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            owner = _model_at(loc)
            known = list(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else (f"; known keys: {', '.join(known)}" if known else "")
            msg = f"unknown key{hint}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        problems.append(f"{path}: {msg}")
    return problems


def parse_settings(raw: Any, source: str = "<config>", base_dir: str = ".") -> Settings:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["<root>: the config must be a YAML mapping"])
    problems: list[str] = []
    data = _substitute_env(raw, "", problems)
    if problems:
        raise ConfigError(source, problems)
    data.setdefault("base_dir", base_dir)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


def load_settings(path: str | Path) -> Settings:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(p), [f"{where}invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    return parse_settings(raw, str(p), base_dir=str(p.resolve().parent))


def check_raw_config(raw: dict[str, Any], path: Path) -> None:
    """Validate a config mapping as if it were read from ``path`` (``tuning.deploy``'s check)."""
    parse_settings(raw, str(path), base_dir=str(path.resolve().parent))


DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
