"""Registry: ids, idempotent registration, atomic copies, lineage, CLI."""

from __future__ import annotations

import json

import pytest

from gateway.cli.registry import main as registry_main
from tuning.registry import Registry, RegistryError


@pytest.fixture()
def reg(tmp_path):
    r = Registry(tmp_path / "reg")
    yield r
    r.close()


def test_register_copies_and_is_idempotent(reg, tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_text('{"a": 1}\n')
    a = reg.register("dataset", src, name="My Data", metadata={"rows": 1})
    assert a.id.startswith("dataset:my-data:") and len(a.id.split(":")[2]) == 12
    assert a.path and a.path != str(src) and open(a.path).read() == '{"a": 1}\n'
    assert reg.register("dataset", src, name="My Data").id == a.id
    assert len(reg.list("dataset")) == 1
    src.write_text('{"a": 2}\n')
    assert reg.register("dataset", src, name="My Data").id != a.id  # new content, new version
    assert not list((reg.artifacts_dir / "dataset").glob(".tmp-*"))


def test_unknown_kind_and_parent_are_errors(reg, tmp_path):
    with pytest.raises(RegistryError, match="unknown kind"):
        reg.register("weights", None, name="x")
    with pytest.raises(RegistryError, match="not registered"):
        reg.register("job", None, name="x", parents=["dataset:nope:000000000000"])


def test_lineage_dataset_job_model_deployment(reg, tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "train.jsonl").write_text("{}\n")
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text("{}")
    ds = reg.register("dataset", d, name="sft-set")
    base = reg.register("model", m, name="base", copy=False)
    job = reg.register("job", None, name="sft-run", metadata={"steps": 3}, parents=[ds.id, base.id])
    (m / "weights.bin").write_text("trained")
    model = reg.register("model", m, name="tuned", parents=[job.id])
    dep = reg.register("deployment", None, name="canary", parents=[model.id])

    lin = reg.lineage(model.id)
    assert {ds.id, base.id, job.id, model.id, dep.id} == lin.ids()
    assert (ds.id, job.id) in lin.edges and (model.id, dep.id) in lin.edges
    tree = lin.render()
    assert tree.splitlines()[0] == model.id
    assert f"<- {job.id}" in tree and f"<- {ds.id}" in tree and f"-> {dep.id}" in tree
    # from the dataset, the whole chain is downstream
    assert dep.id in reg.lineage(ds.id).ids()
    assert reg.resolve("model:tuned").id == model.id


def test_cli_register_list_show_lineage(tmp_path, capsys):
    f = tmp_path / "report.json"
    f.write_text("{}")
    root = str(tmp_path / "r")
    assert registry_main(["--registry", root, "register", "eval_report", str(f), "--name", "sxs"]) == 0
    rid = capsys.readouterr().out.strip()
    assert registry_main(["--registry", root, "register", "deployment", str(f), "--parent", rid]) == 0
    child = capsys.readouterr().out.strip()
    assert registry_main(["--registry", root, "list", "--kind", "eval_report"]) == 0
    assert rid in capsys.readouterr().out
    assert registry_main(["--registry", root, "show", child]) == 0
    assert json.loads(capsys.readouterr().out)["parents"] == [rid]
    assert registry_main(["--registry", root, "lineage", rid]) == 0
    assert f"-> {child}" in capsys.readouterr().out
    assert registry_main(["--registry", root, "show", "model:none"]) == 1
