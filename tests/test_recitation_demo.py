"""The demo gateway cuts a Japanese recitation mid-stream and names its source.

Real gateway (the embedded demo config and policy) on loopback, the official
openai SDK streaming; the demo route echoes the user's message, so the reply
recites whatever the user sends. The demo's mock model streams one chunk per
space-separated piece, so the message puts a space after each sentence.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from gateway.cli.serve import resolve_config
from tests.support import gateway

ESSAY = (Path(__file__).resolve().parents[1] / "gateway" / "demo_corpus" / "kissaten_ja.txt").read_text(encoding="utf-8").strip()
PREAMBLE = (
    "ご依頼の件について、まず全体の流れを簡単にご説明します。最初に資料の一覧を確認し、"
    "次に担当者ごとの作業を割り振ります。そのうえで、来週の打ち合わせまでに必要な準備を進めていきます。"
    "資料の多くは昨年度のものですが、数字の一部は今月の集計に合わせて更新してあります。"
    "不明な点があれば、打ち合わせの前でも後でもかまいませんので、どうぞ気軽にお尋ねください。"
    "それでは、お探しの文章を以下に掲げます。"
)


def sentences(text: str) -> str:
    return text.replace("。", "。 ")


@pytest.fixture
def demo_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # the demo builds its recitation index under ./.gatehouse
    for name in ("GATEHOUSE_DEMO_RECITATION", "GATEHOUSE_DEMO_POLICIES"):
        monkeypatch.setenv(name, "-")  # recorded, so demo_env's values are undone after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("GATEHOUSE_DEMO_KEY", "sk-gatehouse-demo")
    settings, _ = resolve_config(None, demo=True)
    # The demo's in-process embeddings route is not under test here, and loading its model on top of
    # the safety scorer took more than the harness's 60 s start-up budget on a busy machine.
    return settings.model_copy(update={"routes": tuple(r for r in settings.routes if r.name == "demo")})


def test_japanese_recitation_is_cut_mid_stream_with_its_source(demo_settings) -> None:
    with gateway(demo_settings) as (url, _app):
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-gatehouse-demo", max_retries=0)
        released = ""
        with pytest.raises(openai.APIError) as err, client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": sentences(PREAMBLE + ESSAY)}], stream=True
        ) as stream:
            for chunk in stream:
                if chunk.choices:
                    released += chunk.choices[0].delta.content or ""
        body = err.value.body
        assert isinstance(body, dict)
        assert body.get("code") == "content_policy_violation" and body.get("rule") == "output-safety"
        assert "kissaten_ja.txt" in str(body)
        # cut mid-stream: the new text before the quotation was released, the essay was not
        assert released and sentences(PREAMBLE).startswith(released)
        assert ESSAY[:40] not in released.replace(" ", "")

        # the same gateway lets a short quotation inside new text through
        quote = "常連の客は注文を口にしない。"
        assert quote in ESSAY
        reply = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": PREAMBLE + "「" + quote + "」という一文が好きです。"}]
        )
        assert quote in (reply.choices[0].message.content or "")
