"""The whole loop on real servers: traffic -> feedback -> dataset -> SFT -> registry ->
canary deploy -> served by the gateway's local provider -> lineage shows the chain."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import yaml

from gatehouse_core.feedback import FeedbackStore
from gateway.config import check_raw_config
from tests.support import API_KEY, serve_app
from tuning import datasets as tds
from tuning.deploy import deploy
from tuning.jobs import sft
from tuning.jobs.common import TrainConfig
from tuning.registry import Registry
from tuning.testing import build_tiny_lm

pytestmark = pytest.mark.slow
os.environ.setdefault("GATEHOUSE_NO_PROGRESS", "1")
ADMIN = "admin-secret-for-tests"


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


async def until(pred, limit=20.0):
    import asyncio
    import time

    end = time.monotonic() + limit
    while not pred():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


async def test_traffic_to_canary_loop(tmp_path):
    from gateway.app import create_app
    from gateway.config import load_settings

    log = tmp_path / "logs" / "traffic.jsonl"
    cfg_path = tmp_path / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "auth": {"keys": [{"id": "k1", "tenant": "acme", "key": API_KEY}]},
        "admin": {"key": ADMIN},
        "routes": [{"name": "assistant", "targets": [{"name": "mock-echo", "provider": "mock", "model": "echo"}]}],
        "traffic_log": {"sink": "jsonl", "path": str(log), "log_bodies": True, "batch_size": 1},
        "safety": {"backend": "none"},
        "registry": {"path": str(tmp_path / "registry")},
    }))
    settings = load_settings(cfg_path)
    reg = Registry.from_settings(settings)
    store = FeedbackStore(reg.root)
    app = create_app(settings, config_path=cfg_path)
    hdr = {"Authorization": f"Bearer {API_KEY}"}
    base = build_tiny_lm(tmp_path / "base")

    with serve_app(app) as srv:
        async with httpx.AsyncClient(base_url=srv.url, headers=hdr, timeout=60) as c:
            ids = []
            for q in ("say hello", "say goodbye", "what is 2+2?"):
                r = await c.post("/v1/chat/completions", json={"model": "assistant", "messages": [{"role": "user", "content": q}]})
                assert r.status_code == 200, r.text
                ids.append(r.headers["x-request-id"])
            await until(lambda: len(read_log(log)) >= 3)

            # feedback through the gateway (auth applies)
            r = await c.post("/v1/feedback", json={"request_id": ids[0], "rating": "up"})
            assert r.status_code == 201, r.text
            r = await c.post("/v1/feedback", json={"request_id": ids[1], "correction": "goodbye and take care"})
            assert r.status_code == 201
            r = await c.post("/v1/feedback", json={"request_id": "req_unknown", "rating": "up"})
            assert r.status_code == 404 and r.json()["error"]["param"] == "request_id"
            r = await httpx.AsyncClient(base_url=srv.url).post("/v1/feedback", json={"request_id": ids[0], "rating": "up"})
            assert r.status_code == 401

            # dataset -> SFT -> registered model
            man = tds.build("sft", [log], store, tmp_path / "ds", name="assistant-sft", cfg=tds.CurationConfig(val_fraction=0), registry=reg)
            assert man["counts"]["train"] == 2
            run = sft.run(man["registry_path"], base, tmp_path / "run", TrainConfig(max_steps=6, batch_size=2, lr=1e-2, checkpoint_every=3),
                          registry=reg, dataset_id=man["registry_id"], model_name="assistant-sft")
            assert run["final_loss"] < run["first_loss"]

            # canary at 100% so the next request must be served by the tuned model
            res = deploy(run["model_id"], "assistant", 100, cfg_path, registry=reg, check_config=check_raw_config, admin_url=srv.url, admin_key=ADMIN)
            assert res.reloaded == 200
            r = await c.post("/v1/chat/completions", json={"model": "assistant", "messages": [{"role": "user", "content": "say hello"}], "max_tokens": 5})
            assert r.status_code == 200, r.text
            rid = r.headers["x-request-id"]
            await until(lambda: any(x["request_id"] == rid for x in read_log(log)))
            served = next(x for x in read_log(log) if x["request_id"] == rid)
            assert served["variant"] == f"canary-{run['model_id']}"

    lin = reg.lineage(run["model_id"])
    kinds = {i.split(":")[0] for i in lin.ids()}
    assert {"dataset", "job", "model", "deployment"} <= kinds
    assert man["registry_id"] in lin.ids() and res.deployment_id in lin.ids()
    traffic = [p for p in reg.get(man["registry_id"]).parents if p.startswith("dataset:traffic-")]
    assert traffic and traffic[0] in lin.ids()
    tree = lin.render()
    assert f"-> {res.deployment_id}" in tree and f"<- {man['registry_id']}" in tree
    store.close()
    reg.close()
