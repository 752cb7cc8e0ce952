"""A label move through one gateway's admin API is seen by another gateway sharing Redis."""

from __future__ import annotations

import time

import httpx
import openai

from tests.support import API_KEY, gateway, make_settings

ADMIN = "sk-admin-test"


def prompt_spec(text: str) -> dict:
    return {"id": "greeter", "messages": [{"role": "system", "template": text + " {{ name }}."}],
            "variables": {"name": {"description": "who"}}, "author": "tests", "note": text}


def test_label_move_reaches_every_replica(redis_url, redis_prefix):
    settings = make_settings(
        [{"name": "m", "targets": [{"provider": "mock", "model": "echo"}]}],
        redis={"url": redis_url, "key_prefix": redis_prefix}, prompts={"store": "redis"}, admin={"key": ADMIN},
    )
    with gateway(settings) as (url_a, _), gateway(settings) as (url_b, _):
        admin = {"authorization": f"Bearer {ADMIN}"}
        for text in ("Hello", "Good day"):
            assert httpx.post(url_a + "/admin/prompts", json=prompt_spec(text), headers=admin).status_code == 201
        r = httpx.post(url_a + "/admin/prompts/greeter/labels", json={"label": "production", "version": 1}, headers=admin)
        assert r.status_code == 200, r.text

        def served(url: str) -> str:
            c = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
            raw = c.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "hi"}],
                extra_body={"prompt": {"id": "greeter", "label": "production", "variables": {"name": "Ada"}}})
            return raw.headers["x-gatehouse-prompt"]

        assert served(url_a) == served(url_b) == "greeter@1"
        r = httpx.post(url_a + "/admin/prompts/greeter/labels", json={"label": "production", "version": 2}, headers=admin)
        assert r.status_code == 200
        moved = time.monotonic()
        while served(url_b) != "greeter@2":  # the other replica, no restart
            assert time.monotonic() - moved < 1.0, "label move did not reach the second gateway within a second"
        assert served(url_a) == "greeter@2"
        # rollback is a label move too
        assert httpx.post(url_b + "/admin/prompts/greeter/labels", json={"label": "production", "rollback": True}, headers=admin).status_code == 200
        assert served(url_a) == "greeter@1"
