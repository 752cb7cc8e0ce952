"""Rendering prompt templates in a sandbox.

Templates come from whoever can push prompts, variables from whoever calls the
API, so both run in Jinja2's ``ImmutableSandboxedEnvironment`` (no attribute
tricks, no mutation of passed-in objects) with ``StrictUndefined``. Variables
are checked against the version's declaration before rendering, so a missing
or unexpected one is a 400 that names it rather than a blank in the prompt.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import SecurityError

from gateway.errors import invalid
from gateway.prompts.model import SANDBOX as _env
from gateway.prompts.model import PromptVersion

_compiled: dict[str, Any] = {}
_compiled_lock = threading.Lock()
_MAX_COMPILED = 4096


def _template(source: str) -> Any:
    t = _compiled.get(source)
    if t is None:
        t = _env.from_string(source)
        with _compiled_lock:
            if len(_compiled) >= _MAX_COMPILED:
                _compiled.clear()
            _compiled[source] = t
    return t


def render_messages(version: PromptVersion, variables: dict[str, Any] | None) -> list[dict[str, str]]:
    """Render a version's messages; raise ``invalid()`` naming a missing or extra variable."""
    given = dict(variables or {})
    declared = {v.name: v for v in version.variables}
    extra = sorted(set(given) - set(declared))
    if extra:
        raise invalid(
            f"prompt {version.ref}: unexpected variable(s) {', '.join(extra)}; "
            f"declared: {', '.join(sorted(declared)) or '(none)'}",
            param=f"prompt.variables.{extra[0]}",
        )
    missing = sorted(n for n, v in declared.items() if v.required and n not in given)
    if missing:
        raise invalid(
            f"prompt {version.ref}: missing variable(s) {', '.join(missing)}",
            param=f"prompt.variables.{missing[0]}",
        )
    values = {n: (given[n] if n in given else v.default) for n, v in declared.items()}
    deadline = time.monotonic() + RENDER_SECONDS
    out = []
    for m in version.messages:
        try:
            text = _render_budgeted(_template(m.template), values, deadline)
        except SecurityError as exc:
            raise invalid(f"prompt {version.ref}: template refused by the sandbox: {exc}", param="prompt") from None
        except _OverBudget as exc:
            raise invalid(f"prompt {version.ref}: {exc}", param="prompt") from None
        except TemplateError as exc:
            # StrictUndefined on e.g. {{ user.name }} where user has no name
            raise invalid(f"prompt {version.ref}: cannot render: {exc}", param="prompt.variables") from None
        except (RecursionError, OverflowError, MemoryError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            # the template is the prompt author's input: recursive macros, range(10**8), {% include %}
            # without a loader... are the request's fault, never a 500
            raise invalid(f"prompt {version.ref}: cannot render: {type(exc).__name__}: {exc}", param="prompt") from None
        out.append({"role": m.role, "content": text})
    return out


RENDER_SECONDS = 1.0  # CPU time a request's templates may take, all messages together
RENDER_MAX_CHARS = 1_000_000  # characters a request's templates may produce


class _OverBudget(Exception):
    pass


def _render_budgeted(template: Any, values: dict[str, Any], deadline: float) -> str:
    """Render with a time and an output budget. Output is counted chunk by chunk; time is
    checked on every line the compiled template runs (a trace function scoped to template
    frames), so a loop that prints nothing is stopped too."""

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and time.monotonic() > deadline:
            raise _OverBudget(f"rendering took longer than the template budget ({RENDER_SECONDS:g} s)")
        return local

    def global_(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == "<template>" else None

    parts: list[str] = []
    size = 0
    previous = sys.gettrace()
    sys.settrace(global_)
    try:
        for chunk in template.generate(**values):
            size += len(chunk)
            if size > RENDER_MAX_CHARS:
                raise _OverBudget(f"the rendered prompt is over the template budget ({RENDER_MAX_CHARS} characters)")
            parts.append(chunk)
    finally:
        sys.settrace(previous)
    return "".join(parts)


async def arender_messages(version: PromptVersion, variables: dict[str, Any] | None) -> list[dict[str, str]]:
    """``render_messages`` in a worker thread: rendering never runs on the event loop."""
    return await asyncio.to_thread(render_messages, version, variables)
