"""Strict config: unknown keys and bad values are errors with their path and a hint."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.config import ConfigError, load_settings

GOOD = """
auth:
  keys:
    - {id: k, tenant: t, key: "${GH_TEST_KEY}"}
routes:
  - name: chat
    targets:
      - {provider: openai, base_url: "http://127.0.0.1:9/v1", model: m, api_key: "${GH_TEST_UPSTREAM_KEY}"}
"""


def test_env_secrets_substituted_and_hidden(tmp_path, monkeypatch):
    monkeypatch.setenv("GH_TEST_KEY", "sk-abc")
    monkeypatch.setenv("GH_TEST_UPSTREAM_KEY", "sk-upstream-secret")
    p = tmp_path / "c.yaml"
    p.write_text(GOOD)
    s = load_settings(p)
    t = s.routes[0].targets[0]
    assert t.api_key.get_secret_value() == "sk-upstream-secret"
    assert "sk-upstream-secret" not in repr(s) and "sk-upstream-secret" not in str(s.model_dump())


def test_errors_name_the_path_and_hint(tmp_path, monkeypatch):
    monkeypatch.delenv("GH_TEST_KEY", raising=False)
    p = tmp_path / "bad.yaml"
    p.write_text("""
routes:
  - name: a
    targets: [{provider: mock, model: echo}]
  - name: b
    targets:
      - {provider: openai, model: m, base_urll: "http://x"}
    retries: {attempts: -1}
serverr: {}
auth:
  keys:
    - {id: k, tenant: t, key: "${GH_TEST_KEY}"}
""")
    with pytest.raises(ConfigError) as ei:
        load_settings(p)
    assert any("GH_TEST_KEY" in x and "auth.keys[0].key" in x for x in ei.value.problems)
    monkeypatch.setenv("GH_TEST_KEY", "k")
    with pytest.raises(ConfigError) as ei:
        load_settings(p)
    probs = "\n".join(ei.value.problems)
    assert "routes[1].targets[0].base_urll: unknown key; did you mean `base_url`?" in probs
    assert "routes[1].retries.attempts" in probs
    assert "serverr: unknown key; did you mean `server`?" in probs


def test_config_check_cli(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("routes:\n  - name: x\n    targets: [{provider: openai, model: m}]\n")
    r = subprocess.run([sys.executable, "-m", "gateway", "config", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "routes[0].targets[0]: provider `openai` needs `base_url`" in r.stderr
    p.write_text("routes:\n  - name: x\n    targets: [{provider: mock, model: echo}]\n")
    r = subprocess.run([sys.executable, "-m", "gateway", "config", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout


def test_embedding_runtime_is_checked(tmp_path):
    p = tmp_path / "rt.yaml"
    p.write_text("embedding: {runtime: tensorrt}\n")
    with pytest.raises(ConfigError) as ei:
        load_settings(p)
    probs = "\n".join(ei.value.problems)
    assert "embedding.runtime" in probs and "onnx-int8" in probs
    p.write_text("embedding: {runtime: torch, cache_dir: ./onnx-cache}\n")
    s = load_settings(p)
    assert s.embedding.runtime == "torch" and s.resolve_path(s.embedding.cache_dir) == tmp_path / "onnx-cache"
