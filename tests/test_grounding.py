"""Grounding: chunking, index build/manifest, recall on a small corpus, add/delete, hot swap, the stage, CLI."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss loads OpenMP (see docs/grounding.md)

import asyncio
import itertools
import json
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gateway.config import parse_settings
from gateway.errors import GatewayError
from gateway.grounding import IndexHolder, build_stage
from gateway.grounding.builder import add_documents, build_index, delete_documents
from gateway.grounding.index import CURRENT, GroundingIndex, read_manifest
from gateway.grounding.text import Document, chunk_document, html_to_text, iter_documents
from gateway.protocols.chat import reply_in, reply_out, request_out
from gateway.types import Caller, RequestContext, TrafficRecord

DOCS = Path(__file__).parent / "fixtures" / "grounding_docs"

# (question, document that answers it); worded unlike the documents where possible
QUESTIONS = [
    ("How often should I feed my starter culture?", "sourdough.md"),
    ("Why do bakers leave the shaped loaf in the fridge overnight?", "sourdough.md"),
    ("How do foragers tell their sisters where the flowers are?", "honeybees.txt"),
    ("How do bees keep warm in winter?", "honeybees.txt"),
    ("Why is there a chain of islands in Hawaii?", "volcanoes.html"),
    ("What makes an eruption explosive rather than gentle?", "volcanoes.html"),
    ("How did the Romans move water into cities without pumps?", "aqueducts.md"),
    ("Which bridge supplied water to Nimes?", "aqueducts.md"),
    ("Where does the oxygen released by plants come from?", "photosynthesis.txt"),
    ("What does RuBisCO do?", "photosynthesis.txt"),
    ("What is the most popular answer to 1.e4?", "chess_openings.md"),
    ("What does it mean to sacrifice a pawn for the initiative?", "chess_openings.md"),
    ("What causes spring tides?", "tides.txt"),
    ("Why are there two high tides every day?", "tides.txt"),
    ("What is first crack?", "coffee_roasting.html"),
    ("Why should freshly roasted beans rest before brewing?", "coffee_roasting.html"),
    ("What is the difference between merge and rebase?", "git_branching.md"),
    ("What happens when two branches edit the same line?", "git_branching.md"),
    ("How much should I increase my weekly running distance?", "marathon_training.txt"),
    ("What does hitting the wall mean in a race?", "marathon_training.txt"),
    ("Which base do you start from to make a paper crane?", "origami.md"),
    ("What is the legend about a thousand folded cranes?", "origami.md"),
    ("Who invented the lens with concentric glass prisms?", "lighthouses.html"),
    ("How can sailors identify which light they are looking at?", "lighthouses.html"),
    ("Where are most of an octopus's neurons?", "octopus.txt"),
    ("How does an octopus camouflage itself?", "octopus.txt"),
    ("My compost pile smells of ammonia, what should I do?", "composting.md"),
    ("What ratio of browns to greens goes into a compost heap?", "composting.md"),
    ("What is a ii-V-I progression?", "jazz_improvisation.txt"),
    ("What does trading fours mean?", "jazz_improvisation.txt"),
    ("What makes the aurora green?", "aurora.md"),
    ("Where is the best place to see the northern lights?", "aurora.md"),
]
RECALL_AT_3_FLOOR = 0.85

EXTRA_DOC = """# Caring for cast iron pans

Season a cast iron skillet by rubbing a thin layer of oil over it and baking it upside down for an hour.
Never leave the pan soaking in water, because it rusts. Dry it on the stove and wipe it with a drop of oil.
"""


@pytest.fixture(scope="module")
def embedder():
    from evaluators.embedding import shared_embedder

    return shared_embedder()  # the one the gateway's services.embedder() hands out, loaded once


class ThreadEmbedder:
    """The embedder's interface with ``aencode`` in a plain thread (no batcher task tied to this test's loop)."""

    def __init__(self, inner):
        self.inner = inner
        self.model_dir, self.model_id, self.dimension = inner.model_dir, inner.model_id, inner.dimension
        self.fingerprint, self.runtime = inner.fingerprint, inner.runtime

    async def aencode(self, texts):
        return await asyncio.to_thread(self.inner.encode, list(texts))


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder):
    out = tmp_path_factory.mktemp("idx") / "docs-index"
    manifest = build_index(iter_documents([DOCS]), out, embedder, index_type="auto", max_chars=300, progress=False)
    return out, manifest


def ctx_for(body: dict) -> RequestContext:
    rec = TrafficRecord(request_id="r1", ts_start=time.time(), endpoint="chat")
    return RequestContext("r1", "chat", Caller("t", "k"), body, {}, rec)


def test_html_text_and_chunk_overlap():
    text, title = html_to_text(
        "<html><head><title>T &amp; U</title><style>p{}</style><script>var x=1;</script></head>"
        "<body><h1>Head</h1><p>One. Two &lt;b&gt;.</p></body></html>"
    )
    assert title == "T & U" and "var x" not in text and "p{}" not in text and "One. Two <b>." in text
    body = " ".join(f"Sentence number {i} talks about topic {i}." for i in range(12))
    doc = Document("d.txt", "D", body, "d.txt")
    chunks = chunk_document(doc, max_chars=120, overlap=1)
    assert len(chunks) > 3
    for a, b in itertools.pairwise(chunks):
        last_sentence = a.text.rsplit(". ", 1)[-1]
        assert b.text.startswith(last_sentence), "consecutive chunks share one sentence"
    for c in chunks:
        assert body[c.start : c.end] == c.text and len(c.text) <= 120
    assert chunks[-1].text.endswith("topic 11.")


def test_manifest_content(built, embedder):
    from evaluators.embedding import model_fingerprint

    out, m = built
    assert (out / CURRENT).read_text().strip() == m["version"] and (out / m["version"] / "chunks.jsonl").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")], "no temp dirs left behind"
    assert m["embedding"]["dimension"] == 384 and m["embedding"]["model_id"] == embedder.model_id
    assert m["embedding"]["fingerprint"] == embedder.fingerprint != model_fingerprint(embedder.model_dir)
    assert m["embedding"]["runtime"] == "onnx-int8"  # int8 vectors are not torch's: the manifest says so
    assert m["index"]["type"] == "flat" and m["index"]["metric"] == "inner_product" and m["index"]["ntotal"] == m["chunk_count"]
    assert len(m["docs"]) == 16 and {d["doc_id"] for d in m["docs"]} >= {"volcanoes.html", "aurora.md", "tides.txt"}
    volcano = next(d for d in m["docs"] if d["doc_id"] == "volcanoes.html")
    assert volcano["title"] == "How volcanoes form" and len(volcano["chunks"]) >= 2
    rows = [json.loads(line) for line in (out / m["version"] / "chunks.jsonl").read_text().splitlines()]
    assert len(rows) == m["chunk_count"] and sum(len(d["chunks"]) for d in m["docs"]) == len(rows)
    for d in m["docs"]:
        for cid, start, end in d["chunks"]:
            row = next(r for r in rows if r["chunk_id"] == cid)
            assert (row["start"], row["end"]) == (start, end) and row["doc_id"] == d["doc_id"]
    assert len(m["content_hash"]) == 64 and m["created_at"]


def test_an_index_refuses_an_embedder_with_other_numerics(built, tmp_path):
    from evaluators.embedding import Embedder
    from gateway.grounding.builder import add_documents

    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    extra = tmp_path / "extra.txt"
    extra.write_text("A new page about tide tables.")
    with pytest.raises(ValueError, match=r"runtime onnx-int8\).*runtime torch\)"):
        add_documents(copy, iter_documents([extra]), Embedder(runtime="torch"), progress=False)


def test_recall_at_3(built, embedder):
    index = GroundingIndex.load(built[0])
    vecs = embedder.encode([q for q, _ in QUESTIONS])
    found = 0
    for (_q, doc), v in zip(QUESTIONS, vecs, strict=True):
        hits = index.search(v, 3, 0.0)
        assert hits == sorted(hits, key=lambda h: -h.score)
        found += doc in {h.doc_id for h in hits}
    recall = found / len(QUESTIONS)
    print(f"\nrecall@3 = {recall:.3f} over {len(QUESTIONS)} questions, {len(index)} chunks")
    assert recall >= RECALL_AT_3_FLOOR
    assert index.search(vecs[0], 3, min_score=0.99) == []


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_index_types_keep_recall(kind, embedder, tmp_path):
    m = build_index(iter_documents([DOCS]), tmp_path / kind, embedder, index_type=kind, max_chars=300, progress=False)
    index = GroundingIndex.load(tmp_path / kind)
    assert m["index"]["type"] == index.index_type == kind
    vecs = embedder.encode([q for q, _ in QUESTIONS])
    found = sum(doc in {h.doc_id for h in index.search(v, 3, 0.0)} for (_q, doc), v in zip(QUESTIONS, vecs, strict=True))
    print(f"\n{kind}: recall@3 = {found / len(QUESTIONS):.3f}")
    assert found / len(QUESTIONS) >= RECALL_AT_3_FLOOR
    if kind == "ivfpq":  # PQ candidates are re-scored exactly: scores match the flat index
        flat = build_index(iter_documents([DOCS]), tmp_path / "flat", embedder, index_type="flat", max_chars=300, progress=False)
        assert flat["content_hash"] != m["content_hash"]
        exact = GroundingIndex.load(tmp_path / "flat").search(vecs[0], 1)[0]
        assert index.search(vecs[0], 1)[0].score == pytest.approx(exact.score, abs=1e-3)


def test_add_delete_by_doc_id_and_same_content_same_hash(built, embedder, tmp_path):
    src, m0 = built
    idx = tmp_path / "idx"
    shutil.copytree(src, idx)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "cast_iron.md").write_text(EXTRA_DOC)
    q = embedder.encode(["How do I stop my skillet from rusting?"])[0]
    m1 = add_documents(idx, iter_documents([extra]), embedder, progress=False)
    assert m1["chunk_count"] > m0["chunk_count"] and m1["content_hash"] != m0["content_hash"]
    assert GroundingIndex.load(idx).search(q, 1)[0].doc_id == "cast_iron.md"
    m2 = delete_documents(idx, ["cast_iron.md"])
    assert m2["content_hash"] == m0["content_hash"], "same chunks, same model, same type -> same content hash"
    assert GroundingIndex.load(idx).search(q, 1)[0].doc_id != "cast_iron.md"
    with pytest.raises(KeyError, match=r"nope\.md"):
        delete_documents(idx, ["nope.md"])
    assert len([p for p in idx.iterdir() if p.name.startswith("v-")]) <= 3, "old versions are pruned"


async def test_hot_swap_under_concurrent_searches(built, embedder, tmp_path):
    src, _ = built
    idx = tmp_path / "idx"
    shutil.copytree(src, idx)
    holder = IndexHolder(idx, poll_seconds=0.05)
    first = holder.current
    vecs = embedder.encode([q for q, _ in QUESTIONS])
    stop = threading.Event()
    after_swap = threading.Event()  # set once searchers did 50 searches on the new version
    errors: list[BaseException] = []
    counts = {"all": 0, "new": 0}

    def searcher(i: int) -> None:
        while not stop.is_set():
            try:
                index = holder.current  # what a request does: take the current one, keep it
                hits = index.search(vecs[(i + counts["all"]) % len(vecs)], 3, 0.0)
                assert len(hits) == 3
                counts["all"] += 1
                if index is not first:
                    counts["new"] += 1
                    if counts["new"] >= 50:
                        after_swap.set()
            except BaseException as exc:
                errors.append(exc)

    swapped = asyncio.Event()
    holder.on_swap.append(lambda _idx: swapped.set())
    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    holder.start()
    try:
        extra = tmp_path / "extra"
        extra.mkdir()
        (extra / "cast_iron.md").write_text(EXTRA_DOC)
        # rebuild as a different index type while searches run; the poller swaps it in
        docs = iter_documents([DOCS]) + iter_documents([extra])
        await asyncio.to_thread(build_index, docs, idx, embedder, index_type="hnsw", max_chars=300, progress=False)
        await asyncio.wait_for(swapped.wait(), timeout=10)
        assert await asyncio.to_thread(after_swap.wait, 10)
    finally:
        stop.set()
        for t in threads:
            t.join()
        await holder.aclose()
    assert not errors, errors[:3]
    assert holder.swaps == 1 and holder.current is not first and holder.current.index_type == "hnsw"
    assert counts["all"] > 100 and counts["new"] >= 50
    q = embedder.encode(["How do I season a skillet?"])[0]
    assert holder.current.search(q, 1)[0].doc_id == "cast_iron.md"
    assert first.search(q, 1)[0].doc_id != "cast_iron.md", "the old index still answers for requests holding it"
    assert holder.refresh() is False


async def test_stage_injects_numbered_passages_and_reports_them(built, embedder):
    out, m = built
    settings = parse_settings(
        {
            "grounding": {"indexes": {"docs": str(out)}},
            "routes": [
                {"name": "grounded", "grounding": {"top_k": 2}, "targets": [{"provider": "mock", "model": "echo"}]},
                {"name": "plain", "targets": [{"provider": "mock", "model": "echo"}]},
            ],
        }
    )
    services = SimpleNamespace(settings=settings, redis=None, embedder=lambda: ThreadEmbedder(embedder))
    stage = await build_stage(services)
    try:
        body = {
            "model": "grounded",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "What causes spring tides?"},
            ],
        }
        original = list(body["messages"])
        ctx = ctx_for(body)
        await stage.on_request(ctx)
        msgs = request_out(ctx.request)["messages"]  # what goes upstream
        assert msgs[0]["content"] == "You are terse." and msgs[1]["role"] == "system"
        assert "[1] Why the sea has tides" in msgs[1]["content"] and "[2]" in msgs[1]["content"] and "\n[3]" not in msgs[1]["content"]
        assert "cite" in msgs[1]["content"].lower() and msgs[2:] == original[1:]
        header = ctx.response_headers["x-gatehouse-grounding"]
        assert header.isascii() and "\n" not in header and ", " not in header
        info = json.loads(header)
        assert info["index"] == "docs" and info["version"] == m["version"] and len(info["chunks"]) == 2
        assert info["chunks"][0]["id"].startswith("tides.txt#") and 0 < info["chunks"][0]["score"] <= 1
        assert ctx.record.grounding_index == f"docs@{m['version']}"
        assert ctx.record.grounding_chunk_ids == [c["id"] for c in info["chunks"]]
        # hybrid by default: the record says how the passages were found, fusion parameters included
        assert ctx.record.extra["grounding_retrieval"] == {"mode": "hybrid", "fusion": m["fusion"], "bm25": m["lexical"]["params"]}
        resp = reply_out(await stage.on_response(ctx, reply_in({"choices": []})))
        assert resp["gatehouse_grounding"]["chunks"][0]["doc"] == "tides.txt"
        assert stage.stream_filter(ctx) is None

        # request-level switch on an ungrounded route; the key is removed before forwarding
        ctx = ctx_for({"model": "plain", "messages": [{"role": "user", "content": "Who designed the lighthouse lens?"}], "grounding": {"top_k": 1, "min_score": 0.2}})
        await stage.on_request(ctx)
        assert "grounding" not in request_out(ctx.request) and json.loads(ctx.response_headers["x-gatehouse-grounding"])["chunks"][0]["id"].startswith("lighthouses.html")
        untouched = ctx_for({"model": "plain", "messages": [{"role": "user", "content": "x"}]})
        await stage.on_request(untouched)
        assert not untouched.response_headers and untouched.record.grounding_chunk_ids is None
        for bad, param in (({"index": "other"}, "grounding.index"), ({"top_k": 99}, "grounding.top_k"), ({"k": 1}, "grounding.k")):
            with pytest.raises(GatewayError) as ei:
                await stage.on_request(ctx_for({"model": "plain", "messages": [{"role": "user", "content": "x"}], "grounding": bad}))
            assert ei.value.status == 400 and ei.value.param == param
    finally:
        await stage.aclose()


def test_cli_build_query_info_delete(tmp_path, capsys, monkeypatch, embedder):
    import gateway.cli.index as cli

    # the CLI's embedder is the process-wide shared one (the `embedder` fixture), loaded once
    out = tmp_path / "cli-index"
    assert cli.main(["build", str(DOCS), "-o", str(out), "--index-type", "flat", "--no-progress"]) == 0
    assert cli.main(["query", str(out), "Which bridge supplied water to Nimes?", "-k", "2"]) == 0
    assert cli.main(["delete", str(out), "--doc", "aqueducts.md"]) == 0
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "built v-" in text and "16 docs" in text and "aqueducts.md#0" in text and "15 docs" in text
    assert cli.main(["delete", str(out), "--doc", "missing.md"]) == 1
    assert "unknown doc id" in capsys.readouterr().err
    assert read_manifest(out)["index"]["type"] == "flat"
    assert np.load(out / read_manifest(out)["version"] / "vectors.npy").shape[1] == 384


def test_end_to_end_openai_sdk_through_gateway(built, embedder, fake_upstream, tmp_path):
    """OpenAI SDK -> real gateway (uvicorn) -> fake upstream: prompt and grounding headers come back."""
    import openai

    from gateway.prompts import PromptRegistry, parse_spec
    from gateway.prompts.store import SQLitePromptStore
    from tests.support import API_KEY, gateway, make_settings, target

    up_url, upstream = fake_upstream
    db = tmp_path / "prompts.db"

    async def seed() -> None:
        reg = PromptRegistry(SQLitePromptStore(db))
        pv, _ = await reg.push(parse_spec({
            "id": "tutor", "messages": [{"role": "system", "template": "You tutor {{ level }} students."}],
            "variables": ["level"], "parameters": {"temperature": 0.3},
        }))
        await reg.set_label("tutor", "production", pv.version)
        await reg.aclose()

    asyncio.run(seed())
    settings = make_settings(
        [{"name": "tutor-chat", "targets": [target(up_url, "echo")]}],
        prompts={"sqlite_path": str(db)},
        grounding={"indexes": {"docs": str(built[0])}},
        admin={"key": "sk-admin-test"},
    )
    with gateway(settings) as (url, _app):
        client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="tutor-chat",
            messages=[{"role": "user", "content": "Why do we get spring tides?"}],
            extra_body={"prompt": {"id": "tutor", "label": "production", "variables": {"level": "beginner"}},
                        "grounding": {"index": "docs", "top_k": 2}},
        )
        assert raw.headers["x-gatehouse-prompt"] == "tutor@1"
        info = json.loads(raw.headers["x-gatehouse-grounding"])
        assert info["index"] == "docs" and info["chunks"][0]["id"].startswith("tides.txt#")
        body = raw.http_response.json()
        assert body["gatehouse_grounding"]["chunks"][0]["doc"] == "tides.txt"
        assert raw.parse().choices[0].message.content is not None
        sent = upstream.requests[-1]
        assert "prompt" not in sent and "grounding" not in sent and sent["temperature"] == 0.3
        assert sent["messages"][0] == {"role": "system", "content": "You tutor beginner students."}
        assert sent["messages"][1]["role"] == "system" and "[1] Why the sea has tides" in sent["messages"][1]["content"]
        assert sent["messages"][2] == {"role": "user", "content": "Why do we get spring tides?"}

        with client.chat.completions.with_streaming_response.create(
            model="tutor-chat", stream=True, messages=[{"role": "user", "content": "What is first crack?"}],
            extra_body={"grounding": {"top_k": 1}},
        ) as stream:
            assert json.loads(stream.headers["x-gatehouse-grounding"])["chunks"][0]["id"].startswith("coffee_roasting.html#")
            assert "x-gatehouse-prompt" not in stream.headers
            assert any(line.startswith("data:") for line in stream.iter_lines())

        with pytest.raises(openai.BadRequestError) as ei:
            client.chat.completions.create(
                model="tutor-chat", messages=[{"role": "user", "content": "hi"}],
                extra_body={"prompt": {"id": "tutor", "variables": {}}},
            )
        assert "level" in str(ei.value)

        # the admin API is mounted behind the admin key; a label move shows on the next request
        import httpx

        admin = {"authorization": "Bearer sk-admin-test"}
        assert httpx.get(url + "/admin/prompts", headers={"authorization": f"Bearer {API_KEY}"}).status_code == 401
        pushed = httpx.post(url + "/admin/prompts", headers=admin, json={
            "id": "tutor", "messages": [{"role": "system", "template": "You coach {{ level }} learners."}], "variables": ["level"],
        })
        assert pushed.status_code == 201 and pushed.json()["version"] == 2
        moved = httpx.post(url + "/admin/prompts/tutor/labels", headers=admin, json={"label": "production", "version": 2})
        assert moved.json() == {"id": "tutor", "label": "production", "version": 2, "previous": 1}
        raw = client.chat.completions.with_raw_response.create(
            model="tutor-chat", messages=[{"role": "user", "content": "hi"}],
            extra_body={"prompt": {"id": "tutor", "variables": {"level": "expert"}}},
        )
        assert raw.headers["x-gatehouse-prompt"] == "tutor@2"
        assert upstream.requests[-1]["messages"][0]["content"] == "You coach expert learners."


async def test_passages_are_checked_before_they_are_injected(built, embedder):
    """Rules scoped to the `grounding` role run on each retrieved passage; a blocked
    passage is dropped (the request goes on), and the verdict names the passage."""
    from gateway.guardrails import GuardrailStage
    from policies import Engine, PolicySet

    out, _ = built
    policy = """\
id: g
version: 1
owner: tests
rules:
  - id: poisoned-passages
    direction: input
    roles: [grounding]
    checks: [{type: regex, deny: ['spring tides']}]
"""
    guard = GuardrailStage(Engine(PolicySet.from_texts([("g.yaml", policy)])))
    settings = parse_settings({
        "grounding": {"indexes": {"docs": str(out)}},
        "routes": [{"name": "grounded", "grounding": {"top_k": 3}, "targets": [{"provider": "mock", "model": "echo"}]}],
    })
    services = SimpleNamespace(settings=settings, redis=None, embedder=lambda: ThreadEmbedder(embedder), passage_check=guard.check_passages)
    stage = await build_stage(services)
    try:
        ctx = ctx_for({"model": "grounded", "messages": [{"role": "user", "content": "What causes spring tides?"}]})
        await stage.on_request(ctx)  # the user's own "spring tides" is not a grounding passage: no block
        injected = request_out(ctx.request)["messages"][0]["content"]
        info = ctx.state["grounding"]
        assert info["dropped"] and "spring tides" not in injected.lower()
        assert len(info["chunks"]) == 3 - len(info["dropped"]) and ctx.record.grounding_chunk_ids == [c["id"] for c in info["chunks"]]
        fired = [v for v in ctx.record.verdicts if v.action == "block"]
        assert fired and all(v.rule == "poisoned-passages" and v.detail["role"] == "grounding" for v in fired)
    finally:
        await stage.aclose()
