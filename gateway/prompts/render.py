"""Rendering prompt templates in a sandbox.

Templates come from whoever can push prompts, variables from whoever calls the
API, so both run in Jinja2's ``ImmutableSandboxedEnvironment`` (no attribute
tricks, no mutation of passed-in objects) with ``StrictUndefined``. Variables
are checked against the version's declaration before rendering, so a missing
or unexpected one is a 400 that names it rather than a blank in the prompt.
"""

from __future__ import annotations

import threading
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
    out = []
    for m in version.messages:
        try:
            text = _template(m.template).render(**values)
        except SecurityError as exc:
            raise invalid(f"prompt {version.ref}: template refused by the sandbox: {exc}", param="prompt") from None
        except TemplateError as exc:
            # StrictUndefined on e.g. {{ user.name }} where user has no name
            raise invalid(f"prompt {version.ref}: cannot render: {exc}", param="prompt.variables") from None
        out.append({"role": m.role, "content": text})
    return out
