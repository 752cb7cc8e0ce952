"""Deploy a registered model as a weighted canary; promote only on a winning AutoSxS report."""

from __future__ import annotations

import json

import pytest
import yaml

from gateway.cli.registry import main as registry_main
from gateway.config import check_raw_config, load_settings
from tuning.deploy import DeployError, deploy, promote, win_rate_lower_bound
from tuning.registry import Registry

CONFIG = """\
# production config
routes:
  - name: chat
    targets:
      - {provider: mock, model: echo, weight: 3}
      - {name: second, provider: mock, model: "fixed:hi", weight: 1}
  - name: other
    targets:
      - {provider: mock, model: echo}
"""


@pytest.fixture()
def setup(tmp_path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(CONFIG)
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text("{}")
    reg = Registry(tmp_path / "reg")
    model = reg.register("model", m, name="tiny-sft")
    yield cfg, reg, model
    reg.close()


def test_deploy_adds_weighted_local_target(setup):
    cfg, reg, model = setup
    res = deploy(model.id, "chat", 5, cfg, registry=reg, check_config=check_raw_config)
    s = load_settings(cfg)
    route = next(r for r in s.routes if r.name == "chat")
    canary = next(t for t in route.targets if t.provider == "local")
    assert canary.weight == 5 and canary.path == model.path and canary.variant == f"canary-{model.id}"
    assert sorted(t.weight for t in route.targets) == [5, 23.75, 71.25]  # 95 split 3:1
    assert (cfg.parent / "gateway.yaml.bak").read_text() == CONFIG
    assert next(r for r in s.routes if r.name == "other").targets[0].weight == 1
    # idempotent: deploying again re-weights, never duplicates
    deploy(model.id, "chat", 10, cfg, registry=reg, check_config=check_raw_config)
    route = next(r for r in load_settings(cfg).routes if r.name == "chat")
    assert len(route.targets) == 3 and next(t for t in route.targets if t.provider == "local").weight == 10
    dep = reg.get(res.deployment_id)
    assert dep.kind == "deployment" and dep.parents == (model.id,)


def test_deploy_errors(setup):
    cfg, reg, model = setup
    with pytest.raises(DeployError, match="no route 'nope'"):
        deploy(model.id, "nope", 5, cfg, registry=reg, check_config=check_raw_config)
    with pytest.raises(DeployError, match="percentage"):
        deploy(model.id, "chat", 150, cfg, registry=reg, check_config=check_raw_config)
    assert cfg.read_text() == CONFIG


def test_promote_needs_a_winning_report(setup, tmp_path):
    cfg, reg, model = setup
    deploy(model.id, "chat", 5, cfg, registry=reg, check_config=check_raw_config)
    lose = tmp_path / "lose.json"
    lose.write_text(json.dumps({"win_rate": 0.55, "ci": [0.48, 0.62]}))
    with pytest.raises(DeployError, match=r"does not exceed 0\.5"):
        promote(model.id, "chat", 50, cfg, registry=reg, check_config=check_raw_config, report_path=lose)
    win = tmp_path / "win.json"
    win.write_text(json.dumps({"summary": {"win_rate": 0.7, "ci_low": 0.61, "ci_high": 0.79}}))
    with pytest.raises(DeployError, match="--admin-url"):
        promote(model.id, "chat", 50, cfg, registry=reg, check_config=check_raw_config, report_path=win)
    res = promote(model.id, "chat", 50, cfg, registry=reg, check_config=check_raw_config, report_path=win, verify=False)
    route = next(r for r in load_settings(cfg).routes if r.name == "chat")
    assert next(t for t in route.targets if t.provider == "local").weight == 50
    assert sum(t.weight for t in route.targets) == pytest.approx(100)
    dep = reg.get(res.deployment_id)
    assert any(p.startswith("eval_report:") for p in dep.parents)
    promote(model.id, "chat", 100, cfg, registry=reg, check_config=check_raw_config, report_path=lose, force=True, verify=False)


def test_report_shapes():
    assert win_rate_lower_bound({"win_rate_ci": [0.51, 0.6]})[0] == 0.51
    assert win_rate_lower_bound({"win_rate": {"value": 0.6, "ci_low": 0.52}}) == (0.52, 0.6)
    with pytest.raises(DeployError):
        win_rate_lower_bound({"wins": 3})
    sxs = {"summary": {"win_rate_a_ties_half": {"value": 0.3, "ci95": [0.2, 0.4], "n": 50}}}
    assert win_rate_lower_bound(sxs, "A") == (0.2, 0.3)
    lo, v = win_rate_lower_bound(sxs, "B")
    assert lo == pytest.approx(0.6) and v == pytest.approx(0.7)


def test_cli_deploy(setup, capsys):
    cfg, reg, model = setup
    root = str(reg.root)
    assert registry_main(["--registry", root, "deploy", model.id, "--route", "chat", "--weight", "5", "--config", str(cfg)]) == 0
    assert "weight 5.0%" in capsys.readouterr().out
    raw = yaml.safe_load(cfg.read_text())
    assert any(t.get("provider") == "local" for t in raw["routes"][0]["targets"])
    assert registry_main(["--registry", root, "promote", model.id, "--route", "chat", "--weight", "50", "--config", str(cfg)]) == 1
    assert "needs an AutoSxS report" in capsys.readouterr().err
