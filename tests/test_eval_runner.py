"""Evaluation runner: datasets, traffic export, resumable runs against a real loopback server.

Until the gateway app exists, the OpenAI-compatible server here is a tiny
Starlette app on uvicorn (free loopback port) whose behaviour is keyed by model
name, like the gateway's ``mock`` provider (``echo``, ``judge-longer``, ``error:503``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from evaluators.datasets import (
    DatasetError,
    EvalItem,
    ExportStats,
    iter_traffic_records,
    load_dataset,
    traffic_to_items,
    write_dataset,
)
from evaluators.runner import RunConfig, load_run, read_results, run_dataset

# ---------------------------------------------------------------- fake OpenAI-compatible server

_JUDGE_RE = re.compile(r"Answer A:\n(.*?)\n\nAnswer B:\n(.*)", re.S)


class FakeOpenAI:
    """Records every request; replies by model name."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.fail_once: set[str] = set()  # item texts that get one 503 before succeeding

    def reply(self, model: str, body: dict[str, Any]) -> str:
        text = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        if model == "judge-longer":
            m = _JUDGE_RE.search(text)
            a, b = (m.group(1).strip(), m.group(2).strip()) if m else ("", "")
            choice = "tie" if len(a) == len(b) else ("A" if len(a) > len(b) else "B")
            return json.dumps({"choice": choice, "explanation": f"{choice} is longer", "confidence": 0.9})
        if model.startswith("prefix:"):  # "prefix:N" replies with N copies of 'x' then the prompt
            return "x" * int(model.split(":")[1]) + " " + body["messages"][-1]["content"]
        return str(body["messages"][-1]["content"])

    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        model = body["model"]
        with self.lock:
            self.requests.append(body)
        last = str(body["messages"][-1]["content"])
        if model.startswith("error:"):
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=int(model[6:]))
        if last in self.fail_once:
            self.fail_once.discard(last)
            return JSONResponse({"error": {"message": "try again", "type": "server_error"}}, status_code=503)
        if "BLOCKME" in last:
            return JSONResponse(
                {"error": {"message": "blocked by policy", "type": "invalid_request_error", "code": "content_policy_violation"}},
                status_code=400,
                headers={"x-request-id": "req-blocked", "x-gatehouse-policy": "default@7"},
            )
        text = self.reply(model, body)
        rid = "req-" + uuid.uuid4().hex[:12]
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
            headers={"x-request-id": rid, "x-gatehouse-policy": "default@7"},
        )

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])


@contextlib.contextmanager
def serve_fake_openai() -> Iterator[tuple[str, FakeOpenAI]]:
    """A real uvicorn server on a pre-bound loopback socket (listening before the thread starts)."""
    fake = FakeOpenAI()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake.app(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1", fake
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def fake_server() -> Iterator[tuple[str, FakeOpenAI]]:
    with serve_fake_openai() as s:
        yield s


def make_items(n: int) -> list[EvalItem]:
    return [
        EvalItem(id=f"q{i}", messages=({"role": "user", "content": f"question number {i}"},), references=(f"question number {i}",), task="qa")
        for i in range(n)
    ]


# ---------------------------------------------------------------- datasets


def test_load_dataset_reports_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text(
        "\n".join(
            [
                json.dumps({"id": "a", "prompt": "hi", "reference": "x", "task": "qa"}),
                "{not json",
                json.dumps({"id": "b", "messages": [{"role": "user", "content": "x"}], "prompt": "y"}),
                json.dumps({"id": "a", "prompt": "dup"}),
                json.dumps({"id": "c", "prompt": "x", "task": "poetry", "colour": 1}),
            ]
        )
        + "\n"
    )
    with pytest.raises(DatasetError) as ei:
        load_dataset(p)
    msg = str(ei.value)
    assert "line 2: invalid JSON" in msg
    assert "line 3: give exactly one of 'messages' or 'prompt'" in msg
    assert "line 4: duplicate id 'a' (first on line 1)" in msg
    assert "line 5: unknown field(s) ['colour']" in msg and "line 5: unknown task 'poetry'" in msg


def test_dataset_hash_is_canonical(tmp_path: Path) -> None:
    items = make_items(3)
    h1 = write_dataset(items, tmp_path / "a.jsonl")
    # same content, other order and formatting
    (tmp_path / "b.jsonl").write_text(
        "\n".join(json.dumps(it.to_json(), indent=None, separators=(", ", ": ")) for it in reversed(items)) + "\n"
    )
    assert load_dataset(tmp_path / "a.jsonl").hash == load_dataset(tmp_path / "b.jsonl").hash == h1
    assert h1.startswith("sha256:") and len(h1) == 7 + 64
    changed = [*items[:2], EvalItem(id="q2", messages=items[2].messages, references=("other",), task="qa")]
    assert write_dataset(changed, tmp_path / "c.jsonl") != h1


def test_export_from_traffic_log(tmp_path: Path) -> None:
    def rec(i: int, **kw: Any) -> dict[str, Any]:
        base = {
            "request_id": f"r{i}", "ts_start": 1000.0 + i, "endpoint": "chat", "model": "m1", "variant": "a",
            "status": 200, "prompt_id": "triage", "prompt_version": "3",
            "request_body": {"model": "m1", "messages": [{"role": "user", "content": f"hello {i}"}]},
            "response_body": {"choices": [{"message": {"role": "assistant", "content": f"reply {i}"}}]},
        }
        base.update(kw)
        return base

    lines = [
        rec(0), rec(1, variant="b"), rec(2, model="m2"), rec(3, request_body=None), rec(4, status=400),
        rec(5, prompt_version="4"), rec(6), rec(7, ts_start=5000.0),
    ]
    log = tmp_path / "traffic.jsonl"
    log.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"torn": tr')
    stats = ExportStats()
    items = traffic_to_items(
        iter_traffic_records([log]), model="m1", variant="a", prompt_version="3", since=1000, until=2000, stats=stats
    )
    assert [it.id for it in items] == ["r0", "r6"]
    assert items[0].messages[0]["content"] == "hello 0" and items[0].metadata["response"] == "reply 0"
    assert stats.to_dict() == {"seen": 8, "exported": 2, "filtered": 4, "no_body": 1, "failed": 1, "duplicates": 0}
    as_ref = traffic_to_items(iter_traffic_records([log]), model="m1", variant="a", response_as_reference=True, until=2000)
    assert as_ref[0].references == ("reply 0",)


# ---------------------------------------------------------------- runner


async def test_run_records_request_ids_and_blocked_items(tmp_path: Path, fake_server: tuple[str, FakeOpenAI]) -> None:
    url, fake = fake_server
    items = [*make_items(3), EvalItem(id="bad", messages=({"role": "user", "content": "BLOCKME please"},))]
    ds_path = tmp_path / "d.jsonl"
    write_dataset(items, ds_path)
    ds = load_dataset(ds_path)
    fake.fail_once.add("question number 1")  # one transient 503: the client retries it
    cfg = RunConfig(base_url=url, api_key="k", model="echo", prompt_id="triage", prompt_version="production", max_retries=2)
    summary = await run_dataset(ds, tmp_path / "out.jsonl", cfg, progress=False)
    assert (summary.completed, summary.errors, summary.failed) == (4, 1, 0)
    results, meta = load_run(tmp_path / "out.jsonl")
    assert meta["dataset_hash"] == ds.hash and meta["model"] == "echo"
    assert results["q0"]["output"] == "question number 0"
    assert results["q0"]["request_id"].startswith("req-") and results["q0"]["policy_version"] == "default@7"
    assert results["bad"]["status"] == 400 and results["bad"]["error"]["code"] == "content_policy_violation"
    assert results["bad"]["request_id"] == "req-blocked"
    # the prompt reference travels in extra_body; a label, not a version
    assert all(r["prompt"] == {"id": "triage", "label": "production"} for r in fake.requests)


async def test_run_is_resumable_after_a_crash(tmp_path: Path, fake_server: tuple[str, FakeOpenAI]) -> None:
    url, fake = fake_server
    n = 40
    write_dataset(make_items(n), tmp_path / "d.jsonl")
    ds = load_dataset(tmp_path / "d.jsonl")
    out = tmp_path / "out.jsonl"
    cfg = RunConfig(base_url=url, api_key="k", model="echo", concurrency=4)

    crash_after = 13
    done_first: list[str] = []
    task: asyncio.Task[Any]

    def on_result(r: dict[str, Any]) -> None:
        done_first.append(r["id"])
        if len(done_first) == crash_after:
            task.cancel()  # the "crash": in-flight items are abandoned mid-request

    task = asyncio.create_task(run_dataset(ds, out, cfg, progress=False, on_result=on_result))
    with pytest.raises(asyncio.CancelledError):
        await task
    first, torn = read_results(out)
    assert [r["id"] for r in first] == done_first and len(first) == crash_after and not torn

    # a crash can also tear the last line mid-write
    with out.open("ab") as f:
        f.write(b'{"id": "q39", "output": "quest')
    _, torn = read_results(out)
    assert torn

    requested_before = len(fake.requests)
    summary = await run_dataset(ds, out, cfg, progress=False)
    assert summary.torn_line_dropped and summary.skipped == crash_after
    assert summary.completed == n - crash_after
    second_run_ids = {r["messages"][-1]["content"].split()[-1] for r in fake.requests[requested_before:]}
    # nothing completed before the crash was asked again
    assert not second_run_ids & {d[1:] for d in done_first}
    final, torn = read_results(out)
    ids = [r["id"] for r in final]
    assert not torn and len(ids) == n and set(ids) == {it.id for it in ds}  # none lost, none twice
    assert all(r["output"] == f"question number {r['id'][1:]}" for r in final)

    # a third run finds nothing to do
    again = await run_dataset(ds, out, cfg, progress=False)
    assert again.completed == 0 and again.skipped == n


async def test_run_refuses_results_of_another_dataset(tmp_path: Path, fake_server: tuple[str, FakeOpenAI]) -> None:
    url, _ = fake_server
    write_dataset(make_items(2), tmp_path / "a.jsonl")
    write_dataset(make_items(3), tmp_path / "b.jsonl")
    cfg = RunConfig(base_url=url, api_key="k", model="echo")
    await run_dataset(load_dataset(tmp_path / "a.jsonl"), tmp_path / "out.jsonl", cfg, progress=False)
    with pytest.raises(RuntimeError, match="dataset_hash"):
        await run_dataset(load_dataset(tmp_path / "b.jsonl"), tmp_path / "out.jsonl", cfg, progress=False)


async def test_transient_failures_are_left_for_the_next_run(tmp_path: Path, fake_server: tuple[str, FakeOpenAI]) -> None:
    url, _ = fake_server
    write_dataset(make_items(2), tmp_path / "a.jsonl")
    cfg = RunConfig(base_url=url, api_key="k", model="error:503", max_retries=0)
    summary = await run_dataset(load_dataset(tmp_path / "a.jsonl"), tmp_path / "out.jsonl", cfg, progress=False)
    assert (summary.completed, summary.failed) == (0, 2)
    assert read_results(tmp_path / "out.jsonl") == ([], False)


# ---------------------------------------------------------------- through the real gateway


def test_run_through_gateway_then_export_from_its_traffic_log(tmp_path: Path) -> None:
    from tests.support import API_KEY, gateway, make_settings

    settings = make_settings(
        [{"name": "echo", "targets": [{"name": "mock-echo", "provider": "mock", "model": "echo"}]}],
        traffic_log={"sink": "jsonl", "path": str(tmp_path / "traffic.jsonl"), "log_bodies": True},
    )
    write_dataset(make_items(6), tmp_path / "d.jsonl")
    ds = load_dataset(tmp_path / "d.jsonl")
    with gateway(settings) as (url, _app):
        cfg = RunConfig(base_url=url + "/v1", api_key=API_KEY, model="echo", concurrency=3)
        summary = asyncio.run(run_dataset(ds, tmp_path / "out.jsonl", cfg, progress=False))
    assert summary.completed == 6
    results, _ = load_run(tmp_path / "out.jsonl")
    assert all(r["output"] == f"question number {i[1:]}" for i, r in results.items())
    # the x-request-id of every result is the traffic record's request id
    records = list(iter_traffic_records([tmp_path / "traffic.jsonl"]))
    assert {r["request_id"] for r in results.values()} == {rec["request_id"] for rec in records}
    exported = traffic_to_items(records, model="echo", response_as_reference=True)
    assert sorted(it.messages[0]["content"] for it in exported) == sorted(it.messages[0]["content"] for it in ds)
    assert all(it.references == (it.messages[0]["content"],) for it in exported)


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.eval import main

    log = tmp_path / "t.jsonl"
    recs = [
        {"request_id": f"r{i}", "ts_start": 1_700_000_000.0 + i, "endpoint": "chat", "model": "m", "status": 200,
         "request_body": {"messages": [{"role": "user", "content": f"hi {i}"}]},
         "response_body": {"choices": [{"message": {"content": f"yo {i}"}}]}}
        for i in range(4)
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in [*recs, recs[0]]))  # a duplicate line
    rc = main(["export", "--traffic", str(log), "--out", str(tmp_path / "ds.jsonl"), "--model", "m", "--since", "2023-11-14T22:13:21Z"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["items"] == 3  # r0 is before --since; the duplicate is dropped
    assert [it.id for it in load_dataset(tmp_path / "ds.jsonl")] == ["r1", "r2", "r3"]
    assert main(["export", "--traffic", str(log), "--out", str(tmp_path / "x.jsonl"), "--model", "nope"]) == 1
