"""Flow-matching training: loss goes down, resume is exact, seeds reproduce, data sources."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from ctflow.cli import main as cli_main
from ctflow.errors import InputError
from ctflow.priors.datasets import dicom_pool, hdf5_pool, load_pool, random_shift
from ctflow.priors.registry import load_prior
from ctflow.priors.train import (
    TrainConfig,
    cfm_batch,
    ema_update,
    learning_rate,
    make_config,
    ot_pairing,
    step_generator,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path, **kw) -> dict:
    cfg = {"out_dir": str(tmp_path / "run"), "name": "tiny", "image_size": 16, "net": "tiny",
           "pool_size": 32, "val_size": 16, "batch_size": 8, "steps": 8, "lr": 2e-3,
           "warmup": 2, "log_every": 2, "ckpt_every": 4, "progress": False}
    cfg.update(kw)
    return cfg


def saved_state(run_dir) -> dict[str, torch.Tensor]:
    """The tensors of a run's resume state (state.json names its safetensors file)."""
    from safetensors.torch import load_file

    record = json.loads((run_dir / "state.json").read_text())
    assert record["format"] == "ctflow-train-state" and record["step"] == 8
    # no pickle, and the older tensors files (steps 4, ...) are gone
    assert sorted(p.name for p in run_dir.glob("state*")) == sorted(
        ["state.json", record["tensors"]])
    return load_file(str(run_dir / record["tensors"]))


def test_tiny_training_lowers_the_loss(tmp_path):
    out = train(tiny(tmp_path, steps=80, log_every=10, ckpt_every=40, batch_size=16))
    first, last = out["history"][0], out["history"][-1]
    assert out["steps"] == 80 and last["step"] == 80
    assert last["loss"] < 0.75 * first["loss"], (first, last)
    vals = [h["val_loss"] for h in out["history"] if h["val_loss"] is not None]
    assert len(vals) == 2 and vals[-1] < 0.8 * 1.6  # untrained: E‖x1 − z‖² ≈ 1.6
    prior = load_prior(out["run_dir"])  # the run folder is a loadable prior
    cfg = prior.config
    assert cfg["training"]["steps"] == 80 and cfg["weights"] == "ema"
    assert cfg["normalisation"]["offset"] == -1.0
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 9


def test_resume_continues_exactly_and_seed_reproduces(tmp_path):
    full = train(tiny(tmp_path / "a"))
    train(tiny(tmp_path / "b", steps=4))
    resumed = train(tiny(tmp_path / "b", steps=8, resume=True))
    assert resumed["steps"] == 8
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    sa, sb = saved_state(tmp_path / "a" / "run"), saved_state(tmp_path / "b" / "run")
    assert sorted(sa) == sorted(sb) and any(k.startswith("opt.") for k in sa)
    for k, v in sa.items():  # network, EMA and optimizer state, bit for bit
        assert torch.equal(v, sb[k]), k
    other = train(tiny(tmp_path / "c", seed=1))
    assert other["history"][-1]["loss"] != full["history"][-1]["loss"]


def test_step_batches_follow_the_ot_path():
    pool = torch.randn(10, 1, 8, 8)
    xt, t, target = cfm_batch(pool, 6, step_generator(0, 0, 3))
    xt2, t2, target2 = cfm_batch(pool, 6, step_generator(0, 0, 3))
    assert torch.equal(xt, xt2) and torch.equal(t, t2) and torch.equal(target, target2)
    gen = step_generator(0, 0, 3)
    idx = torch.randint(0, 10, (6,), generator=gen)
    z = torch.randn(6, 1, 8, 8, generator=gen)
    tt = torch.rand(6, generator=gen).view(-1, 1, 1, 1)
    assert torch.allclose(xt, tt * pool[idx] + (1 - tt) * z)
    assert torch.allclose(target, pool[idx] - z)
    assert not torch.equal(xt, cfm_batch(pool, 6, step_generator(0, 1, 3))[0])  # rank differs


def test_ot_pairing_is_the_optimal_permutation():
    g = torch.Generator().manual_seed(0)
    x1, z = torch.randn(5, 1, 3, 3, generator=g), torch.randn(5, 1, 3, 3, generator=g)
    perm = ot_pairing(x1, z)
    assert sorted(perm.tolist()) == list(range(5))

    def cost(p):
        return float((x1 - z[list(p)]).square().sum())

    best = min(itertools.permutations(range(5)), key=cost)
    assert cost(perm.tolist()) == pytest.approx(cost(best), rel=1e-9)


def test_ema_update_and_warmup():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, decay=0.999, step=10**6)
    assert torch.allclose(a.weight, 0.999 * before + 0.001 * b.weight, atol=1e-7)
    a2 = torch.nn.Linear(2, 2)
    before2 = a2.bias.detach().clone()
    ema_update(a2, b, decay=0.999, step=0)  # β̄ = min(0.999, 1/10) at the first step
    assert torch.allclose(a2.bias, 0.1 * before2 + 0.9 * b.bias, atol=1e-7)
    cfg = TrainConfig(lr=1e-3, warmup=10)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4) and learning_rate(cfg, 50) == 1e-3
    with pytest.raises(InputError, match="unknown training option"):
        make_config({"lr": 1.0, "bogus": 2})


def test_hdf5_and_dicom_sources(tmp_path):
    hu = np.full((3, 40, 50), 500.0, np.float32)
    hu[:, :, :5] = -3000.0  # cropped away (centre square) — and would be clipped
    with h5py.File(tmp_path / "a.h5", "w") as fh:
        fh["image"] = hu
    pool = hdf5_pool(tmp_path / "a.h5", 16)
    assert pool.shape == (3, 1, 16, 16) and torch.allclose(pool, torch.full_like(pool, 0.5))
    with h5py.File(tmp_path / "bad.h5", "w") as fh:
        fh["sinogram"] = np.zeros((4, 4))
    with pytest.raises(InputError, match="no /image"):
        hdf5_pool(tmp_path / "bad.h5", 16)

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    src = get_testdata_file("CT_small.dcm")
    folder = tmp_path / "series" / "sub"
    folder.mkdir(parents=True)
    shutil.copy(src, folder / "slice1.dcm")
    (folder / "notes.txt").write_text("not dicom")
    pool = dicom_pool(tmp_path / "series", 32)
    ds = pydicom.dcmread(src)
    ref = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    assert ds.Rows == 128 and pool.shape == (1, 1, 32, 32)
    assert float(pool.mean()) == pytest.approx(float(np.clip(ref, -1024, 3071).mean()) / 1000,
                                               abs=0.01)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no training images"):
        dicom_pool(empty, 32)
    with pytest.raises(InputError, match="needs a data path"):
        load_pool("dicom", 32)


def test_random_shift_fills_with_air():
    x = torch.zeros(4, 1, 8, 8)
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and set(y.unique().tolist()) <= {-1.0, 0.0}
    assert (y == 0).sum(dim=(1, 2, 3)).min() >= 36  # at least a 6×6 block survives


def test_cli_train_and_its_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["train", "--out", str(out), "--size", "16", "--net", "tiny", "--pool", "16",
                   "--val-size", "0", "--steps", "3", "--batch-size", "4", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3
    cfg = json.loads((out / "ema.json").read_text())
    assert cfg["training"]["command"] == (
        f"ctflow train --out {out} --size 16 --net tiny --pool 16 --val-size 0 --steps 3 "
        "--batch-size 4 --no-progress")
    rc = cli_main(["train", "--out", str(tmp_path / "x"), "--source", "hdf5",
                   "--data", str(tmp_path / "missing.h5"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "missing.h5" in err


@pytest.mark.slow
def test_torchrun_ddp_on_cpu_with_gloo(tmp_path):
    """Two processes (gloo backend), one checkpoint written by rank 0."""
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "train_prior.py")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         "--nproc_per_node", "2", script, "--out", str(out), "--size", "16", "--net", "tiny",
         "--pool", "16", "--val-size", "0", "--steps", "4", "--batch-size", "4",
         "--ckpt-every", "2", "--log-every", "2", "--threads", "1", "--no-progress",
         "--device", "cpu"],  # also where a GPU is present (one GPU cannot host two ranks)
        capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = json.loads((out / "ema.json").read_text())
    assert cfg["training"]["world_size"] == 2 and cfg["training"]["steps"] == 4
    assert np.isfinite(cfg["training"]["final_loss"])
    assert len((out / "log.csv").read_text().splitlines()) == 3  # header + 2 rows, rank 0 only


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch):
    """A second process on a one-GPU node must not pick a GPU that does not exist."""
    from ctflow.priors import train as train_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(InputError, match="no GPU of its own.*--device cpu"):
        train_module._distributed(make_config({"device": "auto"}))
    rank, world, device = train_module._distributed(make_config({"device": "cpu"}))
    assert (rank, world, device.type) == (0, 1, "cpu")
