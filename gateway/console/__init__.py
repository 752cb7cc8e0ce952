"""The web console at ``/console``: a studio over the running gateway.

Server-rendered (Starlette + Jinja2 with autoescaping), plain HTML forms, one small
script for streamed answers; every asset ships in this package (no CDN, no build).
Enabled by ``console.enabled`` (on in the demo config). Pages: Model Garden,
Playground, Side by side, Prompts, Policies, Traffic, Evaluations and registry (with
"Deploy as canary" on a model's page), Audit.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.console import pages_canary, pages_manage, pages_read, pages_run
from gateway.console.store import LoginThrottle, Session
from gateway.console.web import (
    COOKIE,
    HERE,
    LOGIN_COOKIE,
    PATH,
    SECURITY_HEADERS,
    Console,
    action,
    login_token,
    page,
)


def _safe_next(target: str) -> str:
    # only paths inside the console: never an open redirect
    if target.startswith(PATH + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PATH}/garden"


def console_routes(gatehouse: Any) -> list[BaseRoute]:
    c = Console(gatehouse)
    throttle = LoginThrottle()

    async def index(request: Request) -> Response:
        return RedirectResponse(f"{PATH}/garden", status_code=303)

    async def login_form(request: Request, message: str = "", status: int = 200) -> Response:
        token = login_token()
        resp = c.render(request, "login.html", status=status, login_csrf=token, message=message,
                        next=_safe_next(request.query_params.get("next", "")))
        c.set_cookie(resp, LOGIN_COOKIE, token, 600)
        return resp

    async def login(request: Request) -> Response:
        try:
            c.check_origin(request)
            form = await c.form(request)
        except Exception as exc:  # ConsoleError: shown on the form
            return await login_form(request, getattr(exc, "message", "The form could not be read."), getattr(exc, "status", 400))
        cookie_token = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie_token or not hmac.compare_digest(cookie_token.encode(), form.get("login_csrf").encode()):
            return await login_form(request, "The sign-in form expired or was not sent by this console (CSRF). Try again.", 403)
        user, secret = form.get("user").strip(), form.get("password")
        who = (request.client.host if request.client else "?", user)
        wait = throttle.retry_after(who)
        if wait > 0:
            await c.store.audit(user or "admin", "-", "sign-in", "console", after={"refused": "too many failed attempts"}, ok=False)
            resp = await login_form(request, f"Too many failed sign-ins. Try again in {int(wait) + 1} seconds.", 429)
            resp.headers["retry-after"] = str(int(wait) + 1)
            return resp
        role, tenant, name = "", None, user
        admin = c.rt.settings.admin.key.get_secret_value() if c.rt.settings.admin.key else os.environ.get("GATEHOUSE_ADMIN_KEY")
        if not user:
            if admin and secret and hmac.compare_digest(secret.encode(), admin.encode()):
                role, name = "admin", "admin"
        else:
            u = await c.users.authenticate(user, secret)
            if u is not None:
                role, tenant = u.role, u.tenant
        if not role:
            throttle.failed(who)
            await c.store.audit(name or "admin", "-", "sign-in", "console", after={"refused": "wrong credentials"}, ok=False)
            return await login_form(request, "Wrong user name, password or admin key.", 401)
        throttle.succeeded(who)
        # a new session id on every sign-in: a cookie planted before sign-in is never promoted
        old = await c.session(request)
        if old is not None:
            await c.store.end_session(old)
        sid, _ = await c.store.create_session(name, role, tenant)
        await c.store.audit(name, role, "sign-in", "console", after={"tenant": tenant})
        resp = RedirectResponse(_safe_next(form.get("next")), status_code=303, headers=SECURITY_HEADERS)
        c.set_cookie(resp, COOKIE, sid, c.cfg.session_ttl_seconds)
        resp.delete_cookie(LOGIN_COOKIE, path=PATH)
        return resp

    async def logout(c: Console, request: Request, s: Session, form: Any) -> Response:
        await c.store.end_session(s)
        await c.audit(s, "sign-out", "console")
        resp = RedirectResponse(f"{PATH}/login", status_code=303, headers=SECURITY_HEADERS)
        resp.delete_cookie(COOKIE, path=PATH)
        return resp

    routes: list[BaseRoute] = [
        Route(PATH, index, methods=["GET"]),
        Route(PATH + "/", index, methods=["GET"]),
        Route(PATH + "/login", login_form, methods=["GET"]),
        Route(PATH + "/login", login, methods=["POST"]),
        Route(PATH + "/logout", action(c, logout, name="sign-out"), methods=["POST"]),
        Mount(PATH + "/static", app=StaticFiles(directory=HERE / "static"), name="console-static"),
    ]
    for mod in (pages_read, pages_run, pages_manage, pages_canary):
        for path, methods, handler in mod.routes(c):
            routes.append(Route(PATH + path, handler, methods=methods))

    async def not_found(c: Console, request: Request, s: Session) -> Response:
        return c.error(request, 404, "There is no console page at this address.")

    # last: any other /console address is the console's own (HTML) 404
    routes.append(Route(PATH + "/{rest:path}", page(c, not_found), methods=["GET"]))
    return routes


__all__ = ["Console", "console_routes", "page"]
