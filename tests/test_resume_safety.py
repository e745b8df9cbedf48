"""Resume state is never unpickled: a crafted state.pt does not run, tampered state is refused."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ctflow.errors import InputError
from ctflow.priors.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(run_dir, **kw) -> dict:
    cfg = {"out_dir": str(run_dir), "name": "tiny", "image_size": 16, "net": "tiny",
           "pool_size": 16, "val_size": 0, "batch_size": 4, "steps": 4, "lr": 2e-3,
           "warmup": 2, "log_every": 2, "ckpt_every": 2, "progress": False}
    cfg.update(kw)
    return cfg


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_state_pt_is_refused_and_never_executed(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    run_dir.mkdir()
    torch.save(_Payload(str(marker)), run_dir / "state.pt")  # a pickle inside torch's zip
    with pytest.raises(InputError, match=r"state\.pt: old-format training state \(a pickle"):
        train(tiny(run_dir, resume=True))
    assert not marker.exists()
    assert not (run_dir / "state.json").exists()  # nothing was trained or written


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The folder of a finished 4-step run (copy it before changing anything)."""
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    train(tiny(run_dir))
    return run_dir


def fresh():
    """New network, EMA and optimizer as ``train`` builds them, plus the unet config."""
    import copy

    from ctflow.priors.unet import build_unet, unet_config

    unet = unet_config(16, "tiny")
    torch.manual_seed(123)
    net = build_unet(unet)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.0)
    return net, ema, opt, unet


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    record = json.loads((dst / "state.json").read_text())
    return record, dst / record["tensors"]


def test_state_round_trip_restores_every_tensor(trained, tmp_path):
    from safetensors.torch import load_file

    from ctflow.priors.train_state import load_train_state

    record, tensors_path = copy_run(trained, tmp_path / "run")
    assert record["step"] == 4 and record["tensors"] == "state-00000004.safetensors"
    assert [h["step"] for h in record["history"]] == [2, 4]
    assert record["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    net, ema, opt, unet = fresh()
    back = load_train_state(tmp_path / "run", net, ema, opt, unet)
    assert back is not None and back["step"] == 4
    saved = load_file(str(tensors_path))
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved[f"net.{k}"])
    for k, v in ema.state_dict().items():
        assert torch.equal(v, saved[f"ema.{k}"])
    state = opt.state_dict()
    assert state["param_groups"][0]["betas"] == (0.9, 0.999)
    assert len(state["state"]) == len(list(net.parameters()))
    for i, entry in state["state"].items():
        assert set(entry) == {"step", "exp_avg", "exp_avg_sq"}
        assert float(entry["step"]) == 4.0
        assert torch.equal(entry["exp_avg"], saved[f"opt.{i}.exp_avg"])


def _refused(run_dir, match: str) -> None:
    """Loading the state raises InputError matching ``match`` and leaves the net untouched."""
    from ctflow.priors.train_state import load_train_state

    net, ema, opt, unet = fresh()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(InputError, match=match) as info:
        load_train_state(run_dir, net, ema, opt, unet)
    assert "\n" not in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert not opt.state_dict()["state"]


def test_tampered_tensors_file_is_refused(trained, tmp_path):
    record, tensors_path = copy_run(trained, tmp_path / "run")
    data = bytearray(tensors_path.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    tensors_path.write_bytes(bytes(data))
    _refused(tmp_path / "run", r"state-00000004\.safetensors: checksum does not match state\.json")


def test_consistently_rewritten_but_wrong_state_is_refused(trained, tmp_path):
    """Even with a matching checksum, wrong keys or shapes never reach the network."""
    from safetensors.torch import load_file, save_file

    from ctflow.priors.checkpoint import file_sha256

    record, tensors_path = copy_run(trained, tmp_path / "run")
    original = load_file(str(tensors_path))

    def rewrite(tensors: dict) -> None:
        save_file(tensors, str(tensors_path))
        record["tensors_sha256"] = file_sha256(tensors_path)
        (tmp_path / "run" / "state.json").write_text(json.dumps(record))

    key = next(k for k in original if k.startswith("net.") and original[k].dim() == 4)
    rewrite({**original, key: torch.zeros(1, 1, 1, 1)})
    _refused(tmp_path / "run", rf"{key} is torch.float32 \(1, 1, 1, 1\), expected")
    rewrite({k: v for k, v in original.items() if k != key})
    _refused(tmp_path / "run", rf"lacks {key}")
    rewrite({**original, "opt.9999.exp_avg": torch.zeros(3)})
    _refused(tmp_path / "run", "unexpected tensor 'opt.9999.exp_avg'")
    opt_key = next(k for k in original if k.startswith("opt.") and k.endswith("exp_avg"))
    rewrite({**original, opt_key: torch.zeros(7)})
    _refused(tmp_path / "run", rf"{opt_key} has shape \(7,\)")


def test_bad_state_json_is_refused(trained, tmp_path):
    record, _ = copy_run(trained, tmp_path / "run")
    state_json = tmp_path / "run" / "state.json"
    state_json.write_text("{not json")
    _refused(tmp_path / "run", r"state\.json: not a valid training state")
    state_json.write_text(json.dumps({**record, "tensors": "../elsewhere.safetensors"}))
    _refused(tmp_path / "run", "bad tensors file name")
    state_json.write_text(json.dumps({**record, "unet": {**record["unet"], "sample_size": 32}}))
    _refused(tmp_path / "run", "another network config")
    state_json.write_text(json.dumps({**record, "tensors_sha256": "0" * 64}))
    _refused(tmp_path / "run", "checksum does not match")
    groups = [{**record["optimizer"]["param_groups"][0], "betas": "high"}]
    state_json.write_text(json.dumps({**record, "optimizer": {"param_groups": groups}}))
    _refused(tmp_path / "run", "optimizer setting 'betas' has the wrong type")
    state_json.write_text(json.dumps({**record, "format": "something-else"}))
    _refused(tmp_path / "run", "not a ctflow-train-state file")


def test_interrupted_save_keeps_the_previous_state(trained, tmp_path):
    """A tensors file written for a later step whose state.json never landed is ignored,
    and the resumed run matches the uninterrupted one."""
    copy_run(trained, tmp_path / "run")
    (tmp_path / "run" / "state-00000006.safetensors").write_bytes(b"half a file")
    resumed = train(tiny(tmp_path / "run", steps=6, resume=True))
    full = train(tiny(tmp_path / "full", steps=6))
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    assert sorted(p.name for p in (tmp_path / "run").glob("state*")) == [
        "state-00000006.safetensors", "state.json"]
