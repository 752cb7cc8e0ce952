"""Deployment artefacts, validated offline, plus a real Prometheus loading the rules.

No Docker engine runs here, so the Dockerfile and compose file are checked
statically. ``promtool`` checks and unit-tests the alert rules; when the
``prometheus`` binary exists (CI installs it with apt) a real Prometheus
scrapes a real gateway and a sample exporter and evaluates the rules.

``python tests/test_deploy.py --write-configmap`` regenerates
``deploy/k8s/configmap.yaml`` from ``deploy/config/gateway.yaml`` and
``policies/examples``.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
RULES = DEPLOY / "prometheus" / "rules" / "gatehouse.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gatehouse.json"

# what the gateway exports (the contract in docs/ARCHITECTURE.md + the brief) ...
CORE_METRICS = {
    "gatehouse_requests_total",
    "gatehouse_request_duration_seconds",
    "gatehouse_time_to_first_token_seconds",
    "gatehouse_overhead_seconds",
    "gatehouse_tokens_total",
    "gatehouse_upstream_errors_total",
    "gatehouse_inflight_requests",
    "gatehouse_circuit_open",
    "gatehouse_log_records_dropped_total",
    "gatehouse_guardrail_checks_total",
    "gatehouse_guardrail_latency_seconds",
    "gatehouse_policy_reloads_total",
    "gatehouse_stream_holdback_seconds",
    "gatehouse_ratelimit_redis_errors_total",
    "gatehouse_redis_up",
}
# ... plus these, each checked below to be defined in the gateway's source
EXTRA_METRICS = {
    "gatehouse_log_sink_errors_total",  # gateway/metrics.py
    "gatehouse_ratelimit_decisions_total",  # gateway/ratelimit.py
    "gatehouse_cache_requests_total",  # gateway/cache.py
    "gatehouse_cost_total",  # gateway/cost.py
    "gatehouse_budget_used_ratio",  # gateway/budgets.py
    "gatehouse_budget_decisions_total",
    "gatehouse_budget_threshold_crossed_total",
    "gatehouse_budget_redis_errors_total",
    "gatehouse_tracing_exported_spans_total",  # gateway/tracing.py
    "gatehouse_event_loop_lag_seconds",  # gateway/runtime.py (gateway/loopwatch.py)
    "gatehouse_guardrail_fail_open_total",  # gateway/guardrails.py
    "gatehouse_guardrail_shed_total",  # gateway/guardrails.py
}
PROMETHEUS_BUILTINS = {"up", "ALERTS"}
HEALTH_PATHS = {"/healthz", "/readyz"}


def load_yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for p in sorted(K8S.glob("*.yaml")):
        for d in load_yaml_docs(p):
            if "kind" in d and d.get("kind") != "Kustomization":
                out[(d["kind"], d["metadata"]["name"])] = d
    return out


def render_configmap() -> str:
    class Literal(str):
        pass

    dumper = type("D", (yaml.SafeDumper,), {})
    dumper.add_representer(Literal, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|"))

    def cm(name: str, data: dict[str, str]) -> dict[str, Any]:
        meta = {"name": name, "labels": {"app.kubernetes.io/name": "gatehouse"}}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {k: Literal(v) for k, v in data.items()}}

    cfg = (DEPLOY / "config" / "gateway.yaml").read_text()
    pols = {p.name: p.read_text() for p in sorted((ROOT / "policies" / "examples").glob("*.yaml"))}
    hdr = (
        "# Generated from deploy/config/gateway.yaml and policies/examples/*.yaml; tests/test_deploy.py\n"
        "# checks they stay in sync. Regenerate: python tests/test_deploy.py --write-configmap\n"
    )
    return hdr + yaml.dump_all(
        [cm("gatehouse-config", {"config.yaml": cfg}), cm("gatehouse-policies", pols)], Dumper=dumper, sort_keys=False, width=1000
    )


# --- static checks ------------------------------------------------------------


def test_every_yaml_parses() -> None:
    files = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]
    assert len(files) >= 12
    for p in files:
        assert load_yaml_docs(p), f"{p} is empty"
    json.loads(DASHBOARD.read_text())


def test_gateway_config_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import load_settings

    monkeypatch.setenv("GATEHOUSE_OPS_KEY", "gh-ops")
    monkeypatch.setenv("GATEHOUSE_ADMIN_KEY", "gh-admin")
    s = load_settings(DEPLOY / "config" / "gateway.yaml")
    assert s.auth.store == "redis" and s.redis.url and s.server.host == "0.0.0.0"
    assert s.rate_limits.on_redis_error == "closed"
    assert any(r.cache for r in s.routes)


def test_configmap_in_sync_with_sources() -> None:
    assert (K8S / "configmap.yaml").read_text() == render_configmap(), (
        "deploy/k8s/configmap.yaml is stale: python tests/test_deploy.py --write-configmap"
    )


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_deployment_probes_and_security() -> None:
    objs = k8s_objects()
    dep = objs[("Deployment", "gatehouse")]
    spec = dep["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] in HEALTH_PATHS and (get["port"] in ports or get["port"] in ports.values())
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"]  # HPA needs cpu requests
    # every Secret / ConfigMap the pod uses is defined here
    for ref in c.get("envFrom", []):
        assert ("Secret", ref["secretRef"]["name"]) in objs
    for v in pod["volumes"]:
        if "configMap" in v:
            assert ("ConfigMap", v["configMap"]["name"]) in objs
    mounts = {m["name"] for m in c["volumeMounts"]}
    assert mounts == {v["name"] for v in pod["volumes"]}
    # the grace period outlasts the gateway's own drain
    from gateway.config import parse_settings

    cfg = objs[("ConfigMap", "gatehouse-config")]["data"]["config.yaml"]
    raw = yaml.safe_load(cfg)
    assert pod["terminationGracePeriodSeconds"] > raw["server"]["shutdown_timeout"]
    assert parse_settings  # imported for the side effect of checking the module loads


def test_probe_paths_are_real_routes() -> None:
    """The probe paths answer 200 on a real gateway without an API key."""
    support = pytest.importorskip("tests.support")
    import httpx

    settings = support.make_settings([{"name": "demo", "targets": [{"name": "echo", "provider": "mock", "model": "echo"}]}])
    with support.gateway(settings) as (url, _app):
        for path in sorted(HEALTH_PATHS):
            assert httpx.get(url + path, timeout=5).status_code == 200, path


def test_service_hpa_pdb_match_deployment() -> None:
    objs = k8s_objects()
    dep = objs[("Deployment", "gatehouse")]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    svc = objs[("Service", "gatehouse")]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert all(p["targetPort"] in port_names for p in svc["spec"]["ports"])
    hpa = objs[("HorizontalPodAutoscaler", "gatehouse")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gatehouse"}
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = objs[("PodDisruptionBudget", "gatehouse")]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # a drain can always proceed
    for (kind, _), o in objs.items():
        assert o.get("apiVersion") and o["metadata"].get("name"), kind


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (only needed to render the kustomization)")
def test_kustomize_renders() -> None:
    r = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Namespace", "ConfigMap", "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"])
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "gatehouse"
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gatehouse"


def test_dockerfile_static() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert len(froms) >= 2 and " AS build" in froms[0]
    assert re.search(r"pip install --index-url https://download\.pytorch\.org/whl/cpu torch==2\.13\.0", text)
    user = [ln for ln in lines if ln.upper().startswith("USER ")]
    assert user and all(u.split()[1].split(":")[0] not in ("root", "0") for u in user)
    hc = [ln for ln in lines if ln.upper().startswith("HEALTHCHECK")]
    assert hc and "/healthz" in text[text.index("HEALTHCHECK"):]
    # every COPY source from the build context exists (globs may match nothing only beside a real file)
    for ln in lines:
        if ln.upper().startswith("COPY ") and "--from=" not in ln:
            *srcs, _dst = ln.split()[1:]
            assert any(list(ROOT.glob(s)) for s in srcs), ln
            for s in srcs:
                if not any(ch in s for ch in "*?["):
                    assert (ROOT / s).exists(), s
    assert "ENTRYPOINT" in text and "gatehouse" in text
    # the ONNX encoder is exported at build time and shipped, because the pod's root fs is read-only
    assert re.search(r"RUN .*Embedder\(runtime='onnx-int8'\)", text)
    assert "COPY --from=build /opt/gatehouse-cache /opt/gatehouse-cache" in text
    assert text.count("GATEHOUSE_CACHE_DIR=/opt/gatehouse-cache") == 2


def test_compose_static() -> None:
    c = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = c["services"]
    gateways = [n for n, s in services.items() if s.get("image", "").startswith("gatehouse")]
    assert len(gateways) == 2
    for n in gateways:
        s = services[n]
        assert s["build"]["dockerfile"] == "deploy/Dockerfile" and (DEPLOY / s["build"]["context"] / s["build"]["dockerfile"]).exists()
        assert "redis" in s["depends_on"] and "/healthz" in " ".join(s["healthcheck"]["test"])
        assert s["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert {"redis", "prometheus", "grafana"} <= set(services)
    for s in services.values():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), v
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for sc in prom["scrape_configs"] for g in sc["static_configs"] for t in g["targets"]}
    assert targets == {f"{n}:8080" for n in gateways}
    assert prom["scrape_configs"][0]["job_name"] == "gatehouse"
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/gatehouse.yaml").read_text())
    mount = next(v for v in services["grafana"]["volumes"] if v.startswith("./grafana/dashboards"))
    assert prov["providers"][0]["options"]["path"] == mount.split(":")[1]


def _metric_names(expr: str) -> set[str]:
    names = set()
    for m in re.finditer(r"(?<![\w:$])([a-zA-Z_][a-zA-Z0-9_:]*)\s*(?=[{\[(]|\s*$|\s*[)><=!*/+-])", expr):
        name = m.group(1)
        if name.startswith("gatehouse_"):
            names.add(re.sub(r"_(bucket|sum|count)$", "", name))
        elif name in PROMETHEUS_BUILTINS:
            names.add(name)
    return names


def _rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
    exprs += [v["query"]["query"] for v in d["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    used = set()
    for e in _rule_exprs() + _dashboard_exprs():
        used |= _metric_names(e)
        used |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\bgatehouse_[a-z0-9_]+", e)}
    allowed = CORE_METRICS | EXTRA_METRICS | PROMETHEUS_BUILTINS
    assert used - allowed == set(), f"unknown metrics referenced: {sorted(used - allowed)}"
    # the alerts the brief asks for all exist
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    for needed in ("HighErrorRate", "HighP99Latency", "BlockRateSpike", "LogRecordsDropped", "CircuitOpen", "RedisDown",
                   "BudgetExhaustionForecast", "TracingExportFailing"):
        assert f"Gatehouse{needed}" in alerts
    # the extras are really defined in the gateway's source
    src = "\n".join(p.read_text() for p in (ROOT / "gateway").rglob("*.py"))
    for name in EXTRA_METRICS | CORE_METRICS:
        short = name.removeprefix("gatehouse_")
        assert f'"{short}"' in src or f'"{name}"' in src, f"{name} is not defined in gateway/"


def test_dashboard_layout() -> None:
    d = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and d["uid"] == "gatehouse-overview"
    for p in d["panels"]:
        gp = p["gridPos"]
        assert gp["x"] + gp["w"] <= 24
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}"


# --- promtool -------------------------------------------------------------------

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus; CI's .ci/run installs it)"
)


@needs_promtool
def test_promtool_check_rules_and_config() -> None:
    for args in (["check", "rules", str(RULES)], ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")]):
        if args[1] == "config":
            # the compose config points at /etc/prometheus/rules: check a copy with the repo path
            tmp = Path(tempfile.mkdtemp()) / "prometheus.yml"
            cfg = yaml.safe_load(Path(args[2]).read_text())
            cfg["rule_files"] = [str(RULES)]
            tmp.write_text(yaml.safe_dump(cfg))
            args[2] = str(tmp)
        r = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    r = subprocess.run(
        ["promtool", "test", "rules", str(DEPLOY / "prometheus" / "tests" / "gatehouse.rules.test.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


# --- a real Prometheus -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SampleExporter:
    """Serves the gateway's own metric objects with fault-like values; the
    dropped-records counter grows on every scrape so its alert must fire."""

    def __init__(self) -> None:
        from gateway.metrics import Metrics

        self.m = m = Metrics()
        m.requests.labels("demo", "echo", "200").inc(100)
        m.requests.labels("demo", "echo", "502").inc(1)
        m.duration.labels("demo").observe(0.2)
        m.circuit_open.labels("echo").set(1)
        m.counter("guardrail_checks_total", "x", ("check", "action")).labels("safety", "block").inc(3)
        m.gauge("redis_up", "x", ()).set(0)
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                exporter.m.log_dropped.inc(5)
                body, ctype = exporter.m.render()
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def real_gateway() -> Iterator[str | None]:
    """A real gateway with a mock route (when the lead's app and test support exist)."""
    try:
        from tests.support import gateway, make_settings
    except ImportError:
        yield None
        return
    settings = make_settings([{"name": "demo", "targets": [{"name": "echo", "provider": "mock", "model": "echo"}]}])
    with gateway(settings) as (url, _app):
        req = urllib.request.Request(
            url + "/v1/chat/completions",
            data=json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"authorization": "Bearer sk-test", "content-type": "application/json"},
        )
        for _ in range(3):
            urllib.request.urlopen(req, timeout=10).read()
        yield url


def api(port: int, path: str, **params: str) -> Any:
    q = ("?" + urllib.parse.urlencode(params)) if params else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}{q}", timeout=5) as r:
        return json.loads(r.read())["data"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (apt-get install prometheus; CI installs it)")
def test_real_prometheus_loads_and_evaluates_rules(tmp_path: Path) -> None:
    sample = SampleExporter()
    with real_gateway() as gw_url:
        targets = [f"127.0.0.1:{sample.port}"]
        if gw_url:
            targets.append(gw_url.removeprefix("http://"))
        port = free_port()
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "gatehouse", "static_configs": [{"targets": targets}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        log_fh = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_fh,
        )
        try:
            deadline = time.monotonic() + 40
            state: dict[str, Any] = {}
            while time.monotonic() < deadline:
                time.sleep(0.5)
                if proc.poll() is not None:
                    pytest.fail("prometheus exited: " + (tmp_path / "prometheus.log").read_text()[-2000:])
                try:
                    groups = api(port, "rules")["groups"]
                    alerts = {a["labels"]["alertname"]: a["state"] for a in api(port, "alerts")["alerts"]}
                    up = api(port, "query", query='up{job="gatehouse"}')["result"]
                except (OSError, ValueError):
                    continue
                rules = [r for g in groups for r in g["rules"]]
                state = {"groups": len(groups), "alerts": alerts, "up": len(up), "rules": rules}
                evaluated = all(r.get("health") == "ok" and not r.get("lastEvaluation", "").startswith("0001") for r in rules)
                if (
                    len(groups) == 2
                    and evaluated
                    and len(up) == len(targets)
                    and all(float(u["value"][1]) == 1 for u in up)
                    and alerts.get("GatehouseLogRecordsDropped") == "firing"
                    and alerts.get("GatehouseRedisDown") in ("pending", "firing")
                    and alerts.get("GatehouseCircuitOpen") in ("pending", "firing")
                ):
                    break
            else:
                bad = [(r["name"], r.get("health"), r.get("lastError")) for r in state.get("rules", []) if r.get("health") != "ok"]
                pytest.fail(f"rules not loaded/evaluated in time: alerts={state.get('alerts')} up={state.get('up')} unhealthy={bad}")
            # every metric a rule names resolves to real series from the scraped targets
            for name in ("gatehouse_requests_total", "gatehouse_request_duration_seconds_bucket", "gatehouse_redis_up"):
                assert api(port, "query", query=name)["result"], name
            if gw_url:
                got = api(port, "query", query=f'gatehouse_requests_total{{instance="{targets[1]}",model="demo"}}')["result"]
                assert got and sum(float(r["value"][1]) for r in got) >= 3
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log_fh.close()
            sample.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-configmap"]:
        (K8S / "configmap.yaml").write_text(render_configmap())
        print("wrote", K8S / "configmap.yaml")
    else:
        print(__doc__)
