"""What every console page shares: the ``Console`` object, sessions, forms, rendering.

Deny by default: every page needs a session except the sign-in form and the static
files. Every POST carries the session's CSRF token (and, when the browser sends one,
an ``Origin`` equal to the console's own); a viewer gets 403 on editor actions; every
state-changing action is written to the audit log, refused ones too.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.console.store import ConsoleStore, Session, csrf_ok
from gateway.console.users import UserStore
from gateway.errors import GatewayError

HERE = Path(__file__).parent
COOKIE = "gatehouse_console"
LOGIN_COOKIE = "gatehouse_console_login"  # double-submit CSRF token of the sign-in form
PATH = "/console"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
       "frame-ancestors 'self'; form-action 'self'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "x-frame-options": "SAMEORIGIN",
}
NAV = (("garden", "Model Garden"), ("playground", "Playground"), ("sxs", "Side by side"), ("prompts", "Prompts"),
       ("policies", "Policies"), ("traffic", "Traffic"), ("evals", "Evaluations"), ("audit", "Audit log"))


class ConsoleError(Exception):
    """Shown to the user as an HTML error page with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _fmt_ts(ts: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts))) + " UTC"
    except (TypeError, ValueError):
        return ""


def _fmt_ms(v: Any) -> str:
    return "" if v is None else f"{float(v):.1f} ms"


@dataclass
class Form:
    fields: dict[str, list[str]]

    def get(self, name: str, default: str = "") -> str:
        v = self.fields.get(name)
        return v[0] if v else default

    def items(self, prefix: str) -> dict[str, str]:
        return {k[len(prefix):]: v[0] for k, v in self.fields.items() if k.startswith(prefix) and v}


class Console:
    """One per app: the gateway it runs in, its stores and its templates."""

    def __init__(self, gatehouse: Any) -> None:
        self.gh = gatehouse
        self.rt = gatehouse.runtime
        s = self.rt.settings
        self.cfg = s.console
        self.store = ConsoleStore(s.resolve_path(self.cfg.db_path), self.cfg.session_ttl_seconds)
        self._users: UserStore | None = None
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                               trim_blocks=True, lstrip_blocks=True)
        self.env.filters["ts"] = _fmt_ts
        self.env.filters["ms"] = _fmt_ms
        self.config_lock = asyncio.Lock()  # one config-file rewrite and reload at a time (canary deploys)
        self.rt.on_shutdown.append(self.close)

    @property
    def users(self) -> UserStore:
        if self._users is None:  # the Redis client exists only after startup
            self._users = UserStore(self.rt.settings, self.rt.services.redis)
        return self._users

    def close(self) -> None:
        self.store.close()
        if self._users is not None:
            self._users.close()

    # -- rendering --------------------------------------------------------------------
    def render(self, request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        session: Session | None = request.scope.get("console_session")
        html = self.env.get_template(template).render(
            session=session, nav=NAV, active=ctx.pop("active", ""), csrf=session.csrf if session else "", **ctx)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status=status, status_code=status, message=message)

    # -- sessions and forms ------------------------------------------------------------
    def set_cookie(self, resp: Response, name: str, value: str, max_age: int) -> None:
        resp.set_cookie(name, value, max_age=max_age, path=PATH, httponly=True, samesite="strict",
                        secure=self.cfg.cookie_secure)

    async def session(self, request: Request) -> Session | None:
        return await self.store.session(request.cookies.get(COOKIE))

    async def form(self, request: Request) -> Form:
        """An url-encoded form, read up to ``console.max_form_bytes`` (413 past it); the gateway's
        ``limits.max_control_body_bytes`` applies too (the outer middleware enforces it)."""
        limit = self.cfg.max_form_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ConsoleError(413, f"The form is larger than {limit} bytes (console.max_form_bytes).")
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype not in ("application/x-www-form-urlencoded", ""):
            raise ConsoleError(415, "Forms must be sent as application/x-www-form-urlencoded.")
        body = b""
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ConsoleError(413, f"The form is larger than {limit} bytes (console.max_form_bytes).")
        except GatewayError as exc:  # the gateway's own body limit (limits.max_control_body_bytes)
            raise ConsoleError(exc.status, exc.message) from None
        try:
            return Form(parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=500))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ConsoleError(400, f"The form could not be read: {exc}") from None

    def check_origin(self, request: Request) -> None:
        origin = request.headers.get("origin")
        if origin and origin != "null":
            host = request.headers.get("host", "")
            if urlsplit(origin).netloc != host:
                raise ConsoleError(403, "Cross-origin form submission refused.")

    async def audit(self, s: Session, action: str, target: str, before: Any = None, after: Any = None, ok: bool = True) -> None:
        await self.store.audit(s.user, s.role, action, target, before, after, ok)


Handler = Callable[[Console, Request, Session], Awaitable[Response]]
FormHandler = Callable[[Console, Request, Session, Form], Awaitable[Response]]


def page(c: Console, fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A GET page: needs a session (else the sign-in form)."""
    async def endpoint(request: Request) -> Response:
        s = await c.session(request)
        if s is None:
            return RedirectResponse(f"{PATH}/login?next={request.url.path}", status_code=303)
        request.scope["console_session"] = s
        try:
            return await fn(c, request, s)
        except ConsoleError as exc:
            return c.error(request, exc.status, exc.message)
    return endpoint


def action(c: Console, fn: FormHandler, *, editor: bool = False, name: str = "") -> Callable[[Request], Awaitable[Response]]:
    """A POST: session, Origin, CSRF token, then role; refusals after sign-in are audited."""
    async def endpoint(request: Request) -> Response:
        s = await c.session(request)
        if s is None:
            return c.error(request, 401, "Your session has ended. Sign in again.")
        request.scope["console_session"] = s
        try:
            c.check_origin(request)
            form = await c.form(request)
            if not csrf_ok(s, form.get("csrf")):
                await c.audit(s, name or request.url.path, request.url.path, after={"refused": "bad or missing CSRF token"}, ok=False)
                raise ConsoleError(403, "The form's security token is missing or wrong (CSRF). Reload the page and try again.")
            if editor and not s.can_edit:
                await c.audit(s, name or request.url.path, request.url.path, after={"refused": f"role {s.role} may not do this"}, ok=False)
                raise ConsoleError(403, f"Your role ({s.role}) may only read. This action needs an editor.")
            return await fn(c, request, s, form)
        except ConsoleError as exc:
            return c.error(request, exc.status, exc.message)
    return endpoint


def login_token() -> str:
    return secrets.token_urlsafe(24)
