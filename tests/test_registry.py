"""Model registry: atomic registration, states and audit log, pruning, and two processes registering at once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import models.registry as registry_module
from models.registry import ModelRegistry, RegistryError, VersionNotFound
from tests.serving_fixtures import REPO, tiny_pose_onnx


@pytest.fixture
def model_file(tmp_path):
    return tiny_pose_onnx(tmp_path / "m.onnx", seed=1)


def test_register_writes_complete_immutable_version(tmp_path, model_file) -> None:
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"checkpoint-bytes")
    reg = ModelRegistry(tmp_path / "reg")
    v1 = reg.register(model_file, actor="alice")
    v2 = reg.register(
        model_file,
        checkpoint_path=ckpt,
        metrics={"pck": 0.61},
        parent="1",
        data_summary={"labelled": 100},
        config={"lr": 1e-3},
        actor="worker",
    )
    assert (v1.version, v2.version) == ("1", "2") and v1.state == v2.state == "candidate"
    assert v2.parent == "1" and v2.meta["metrics"] == {"pck": 0.61} and v2.meta["data_summary"] == {"labelled": 100}
    assert v2.onnx_path.read_bytes() == model_file.read_bytes()
    assert v2.checkpoint_path.name == "checkpoint.pt" and v2.checkpoint_path.read_bytes() == b"checkpoint-bytes"
    import hashlib

    files = v2.meta["files"]
    assert files["model.onnx"]["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert files["checkpoint.pt"]["size"] == len(b"checkpoint-bytes")
    assert v2.meta["size_bytes"] == sum(f["size"] for f in files.values())
    assert v2.meta["onnx"]["num_keypoints"] == 14 and v2.meta["onnx"]["input_size_wh"] == [48, 64]
    assert json.loads((v2.path / "meta.json").read_text())["version"] == "2"
    with pytest.raises(VersionNotFound):
        reg.register(model_file, parent="99")
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_bytes(b"garbage")
    with pytest.raises(RegistryError, match="cannot register"):
        reg.register(not_onnx)
    assert [v.version for v in reg.list()] == ["1", "2"]


def test_crash_mid_register_leaves_no_visible_version(tmp_path, model_file, monkeypatch) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    real_write = registry_module.atomic_write_bytes

    def crash_on_meta(path, data):
        if path.name == "meta.json":
            path.write_bytes(data[: len(data) // 2])  # half-written, then the process "dies"
            raise OSError("simulated crash while writing meta.json")
        real_write(path, data)

    monkeypatch.setattr(registry_module, "atomic_write_bytes", crash_on_meta)
    with pytest.raises(OSError, match="simulated crash"):
        reg.register(model_file)
    assert reg.list() == [] and list(reg.versions_dir.iterdir()) == [] and list(reg.staging_dir.iterdir()) == []

    # crash after the directory was renamed but before the index write: the directory is invisible
    monkeypatch.setattr(registry_module, "atomic_write_bytes", real_write)
    real_write_index = ModelRegistry._write_index
    monkeypatch.setattr(ModelRegistry, "_write_index", lambda self, index: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        reg.register(model_file)
    assert reg.list() == [] and [p.name for p in reg.versions_dir.iterdir()] == ["1"]
    monkeypatch.setattr(ModelRegistry, "_write_index", real_write_index)
    info = reg.register(model_file)  # skips the orphan's number, and prunes the orphan
    assert info.version == "2" and [v.version for v in reg.list()] == ["2"]
    assert [p.name for p in reg.versions_dir.iterdir()] == ["2"]


def test_states_previous_active_and_audit_log(tmp_path, model_file) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    for _ in range(3):
        reg.register(model_file, actor="worker")
    assert reg.active() is None and reg.previous_active() is None
    reg.set_active("1", actor="ops-a", reason="first")
    reg.set_active("2", actor="ops-b", reason="better pck")
    assert reg.active().version == "2" and reg.previous_active().version == "1"
    assert reg.get("1").state == "retired" and reg.get("1").reason == "replaced by 2"
    reg.mark_rejected("3", "warm-up produced NaN", actor="ops-b")
    assert reg.get("3").state == "rejected" and reg.get("3").reason == "warm-up produced NaN"
    with pytest.raises(RegistryError, match="rejected"):
        reg.set_active("3", actor="ops-b")
    with pytest.raises(RegistryError, match="active"):
        reg.mark_rejected("2", "no", actor="ops-b")
    reg.set_active("1", actor="ops-c", reason="rollback", action="rollback")
    assert reg.active().version == "1" and reg.previous_active().version == "2"
    assert reg.set_active("1", actor="x").state == "active"  # no-op, no event
    with pytest.raises(VersionNotFound):
        reg.get("42")

    events = reg.events()
    assert [(e["action"], e["version"], e["from"], e["to"]) for e in events] == [
        ("register", "1", None, "candidate"),
        ("register", "2", None, "candidate"),
        ("register", "3", None, "candidate"),
        ("promote", "1", "candidate", "active"),
        ("promote", "2", "candidate", "active"),
        ("retire", "1", "active", "retired"),
        ("reject", "3", "candidate", "rejected"),
        ("rollback", "1", "retired", "active"),
        ("retire", "2", "active", "retired"),
    ]
    assert events[4]["actor"] == "ops-b" and events[4]["reason"] == "better pck" and events[4]["previous_active"] == "1"
    assert all(e["ts"].endswith("+00:00") for e in events)
    assert reg.events(limit=2) == events[-2:]
    # the audit log is JSON lines on disk, one event per line
    assert len((tmp_path / "reg" / "audit.jsonl").read_text().splitlines()) == len(events)


def test_pruning_keeps_newest_active_and_previous(tmp_path, model_file) -> None:
    reg = ModelRegistry(tmp_path / "reg", keep_last=2)
    for _ in range(6):
        reg.register(model_file)
    reg.set_active("1", actor="t")
    reg.set_active("2", actor="t")  # 1 retired, previous active
    reg.set_active("3", actor="t")  # 2 retired, previous active; 1 retired → pruned (not among newest 2)
    reg.mark_rejected("4", "bad", actor="t")
    pruned = reg.prune()
    on_disk = {v.version: v.on_disk for v in reg.list()}
    assert on_disk == {"1": False, "2": True, "3": True, "4": False, "5": True, "6": True}
    assert pruned == ["4"]  # 1 was already pruned by set_active
    assert not (reg.versions_dir / "1").exists() and (reg.versions_dir / "5").exists()
    assert reg.get("1").state == "retired"  # the history stays in the index
    with pytest.raises(RegistryError, match="pruned"):
        reg.set_active("1", actor="t")
    assert {e["version"] for e in reg.events() if e["action"] == "prune"} == {"1", "4"}


def test_two_processes_register_concurrently_get_distinct_versions(tmp_path, model_file) -> None:
    root = tmp_path / "reg"
    ModelRegistry(root)
    script = textwrap.dedent(f"""
        import sys
        from models.registry import ModelRegistry
        reg = ModelRegistry({str(root)!r})
        out = [reg.register({str(model_file)!r}, actor=sys.argv[1]).version for _ in range(4)]
        print(",".join(out))
    """)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"p{i}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(out.strip().split(","))
    versions = [v for r in results for v in r]
    assert sorted(versions, key=int) == [str(i) for i in range(1, 9)]  # distinct, no gaps
    for r in results:
        assert r == sorted(r, key=int)  # increasing within a process
    reg = ModelRegistry(root)
    assert [v.version for v in reg.list()] == [str(i) for i in range(1, 9)]
    assert all((v.path / "model.onnx").stat().st_size == model_file.stat().st_size for v in reg.list())
    assert len([e for e in reg.events(100) if e["action"] == "register"]) == 8
