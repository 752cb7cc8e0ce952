"""`gatehouse serve --workers 2`: metrics are aggregated across worker processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx

from tests.support import API_KEY, free_port


def test_metrics_correct_with_two_workers(tmp_path):
    port = free_port()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""
auth:
  keys: [{{id: k, tenant: t, key: {API_KEY}}}]
routes:
  - name: m
    targets: [{{provider: mock, model: echo}}]
traffic_log: {{sink: jsonl, path: traffic.jsonl}}
safety: {{backend: none}}
""")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(port), "--workers", "2",
                             "--log-level", "warning"], env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gateway with 2 workers did not start"
            time.sleep(0.1)
        n = 40
        for i in range(n):  # a new connection each time, so both workers take requests
            r = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {API_KEY}"},
                           json={"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]})
            assert r.status_code == 200
        pattern = re.compile(r'^gatehouse_requests_total\{model="m",status="200",target="mock:echo"\} (\S+)$', re.M)
        for _ in range(6):  # whichever worker answers the scrape reports the sum of both
            m = pattern.search(httpx.get(url + "/metrics").text)
            assert m is not None and float(m.group(1)) == n
        assert len(list((tmp_path / "prom").glob("counter_*.db"))) == 2, "expected one metrics file per worker"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    # both workers flushed their records on shutdown
    assert len((tmp_path / "traffic.jsonl").read_text().splitlines()) == n
