"""Hardening (#17): prompt templates render off the event loop, within a time and an output
budget, and a template that cannot render is a 400, never a 500.

Findings covered: admin templates with ``{% include %}``, ``{% import %}``, a recursive macro
or ``range(100000000)`` gave 500; a 10,000 x 10,000 loop rendered on the event loop for 7 s.
"""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.prompts.model import MessageTemplate, PromptFormatError, PromptVersion, parse_spec
from gateway.prompts.render import arender_messages, render_messages


def version(template: str) -> PromptVersion:
    return PromptVersion("p", 1, (MessageTemplate("system", template),), (), {}, None, None, None, "h", 0.0)


@pytest.mark.parametrize("template", [
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",  # recursive macro
    "{% for i in range(100000000) %}x{% endfor %}",  # over Jinja's MAX_RANGE
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",  # 10^10 silent steps
    "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",  # 10^8 characters
    "{{ 'x' * 1000000000 }}",
    "{{ 2 ** 100000000 }}",
    "{% include 'other' %}",
    "{% import 'other' as o %}{{ o.x }}",
])
async def test_a_template_that_cannot_render_is_a_400(template: str) -> None:
    with pytest.raises(GatewayError) as exc:
        await arender_messages(version(template), {})
    err = exc.value
    assert err.status == 400 and err.body()["error"]["param"] == "prompt"


@pytest.mark.parametrize("template", ["{% include 'x' %}", "{% import 'x' as y %}", "{% from 'x' import y %}", "{% extends 'x' %}"])
def test_include_and_import_are_refused_at_push(template: str) -> None:
    with pytest.raises(PromptFormatError, match="self-contained"):
        parse_spec({"id": "p", "messages": [{"role": "system", "template": template}]})


def test_ordinary_templates_still_render() -> None:
    out = render_messages(version("{% for i in range(3) %}{{ i }}{% endfor %} {{ 'ab' * 2 }}"), {})
    assert out == [{"role": "system", "content": "012 abab"}]
