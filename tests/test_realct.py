"""The real-CT pool: patient-level split, training crops, the real-data bench source and the
trainer's realct source.  Skipped (with the reason) where the licensed pool is not present."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ctflow
from ctflow import realct

pytestmark = pytest.mark.skipif(not (realct.realct_dir() / realct.POOL_FILE).is_file(),
                                reason="the real-CT pool (shared/data/realct) is not here")


def test_split_is_by_patient():
    splits = {name: realct.pool_slices(name) for name in ("train", "val", "ood")}
    patients = {name: {s.patient for s in slices} for name, slices in splits.items()}
    assert not patients["train"] & patients["val"] and not patients["ood"] & patients["val"]
    assert patients["val"] == set(realct.VALIDATION_PATIENTS)
    assert {s.series for s in splits["val"]} >= {"Lung_Dx-A0002_2_B70f", "Lung_Dx-A0002_3_B40f"}
    assert {s.body_part for s in splits["ood"]} == {"HEAD"}
    assert all(s.body_part == "CHEST" for s in splits["train"] + splits["val"])
    assert [len(splits[k]) for k in ("train", "val", "ood")] == [80, 64, 28]
    assert len(realct.pool_slices("all")) == 172
    hu = splits["val"][0].hu
    assert hu.shape == (256, 256) and -1100 < hu.min() < -900 and hu.max() > 500


def test_training_crops_are_seeded_and_augmented():
    slices = realct.pool_slices("train")
    a = realct.training_patches(slices, 32, 8, seed=3)
    b = realct.training_patches(slices, 32, 8, seed=3)
    c = realct.training_patches(slices, 32, 8, seed=4)
    assert a.shape == (8, 32, 32) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() > -1200 and a.max() < 3500
    images = realct.validation_images(48, 3)
    assert len(images) == 3 and all(im.shape == (48, 48) for im in images)


def test_bench_runs_on_real_patients(tmp_path):
    from ctflow.bench import BenchConfig, run_bench

    out = tmp_path / "bench"
    run_bench(BenchConfig(tasks=["ct60"], methods=["fbp"], size=32, images=2, data="realct",
                          out=out), progress=False)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["psnr"] > 20 for r in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["kind"] == "realct" and config["data"]["split"] == "val"
    assert "real patients" in (out / "report.md").read_text()


def test_trainer_reads_the_training_patients_only(tmp_path):
    from ctflow.priors.train import train

    result = train(dict(out_dir=str(tmp_path / "run"), image_size=16, net="tiny",
                        source="realct", pool_size=8, val_size=4, steps=2, batch_size=2,
                        threads=1, log_every=1, ckpt_every=2, progress=False, min_crop=32))
    assert result["history"][-1]["val_loss"] > 0
    config = json.loads((tmp_path / "run" / "ema.json").read_text())
    data = config["training"]["data"]
    assert data["source"] == "realct" and "CC BY 4.0" in data["attribution"]
    assert not set(data["patients"]) & realct.VALIDATION_PATIENTS
    # crops of 32..256 pool pixels shown at 16²: whole slices at 16²..128² (tiny net: ×2)
    assert config["sizes"] == {"min": 16, "max": 128, "multiple_of": 2}
    prior = ctflow.load_prior(str(tmp_path / "run"))
    assert prior.supports_size(64) and not prior.supports_size(136)
