"""realct-64's presets for the non-CT families (inpainting, super-resolution, blur) were
tuned with it on the real validation patients (``docs/bench_realct_images``): checked on two
validation slices against TV, the classical baseline of those tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ctflow
from ctflow.bench.tasks import get_task
from ctflow.metrics import psnr
from ctflow.priors.presets import load_presets
from ctflow.realct import validation_images
from ctflow.units import mu_to_hu

pytestmark = pytest.mark.usefixtures("one_thread")

PRIORS_DIR = Path(__file__).resolve().parents[1] / "data" / "priors"


def test_image_family_records_were_tuned_with_realct_on_real_slices():
    presets = load_presets(PRIORS_DIR / "realct-64.presets.json")
    assert presets is not None
    records = presets.records("conjugate")
    image = [r for r in records if r["family"] in ("inpainting", "sr", "blur")
             and not r["requires"].get("jacobian", False)]
    assert {(r["family"], r["size"]) for r in image} >= {
        (f, s) for f in ("inpainting", "sr", "blur") for s in (64, 128)}
    for record in image:
        assert record["tuned"]["prior"] == "realct-64"
        assert "--data realct" in record["tuned"]["command"]


@pytest.mark.parametrize(("task", "margin"), [("sr4", 1.0), ("inpaint-random", 0.3)])
def test_conjugate_defaults_beat_tv_on_real_slices(task, margin):
    """C-ΠGFM@5 above TV on each of 2 validation slices at 64², by ``margin`` dB on average
    (measured: inpaint-random +0.99 and +0.34 dB; 8-slice means: sr4 C-ΠGFM@5 25.65 against
    TV 22.91 dB, inpaint-random 26.54 against 25.05)."""
    prior = ctflow.load_prior("realct-64")
    gains = []
    for i, gt in enumerate(validation_images(64, 2)):
        problem = get_task(task).problem(gt.astype(np.float64), seed=i)
        scores = []
        for method in ("tv", "conjugate"):
            res = ctflow.reconstruct(problem.y, problem.op, method=method, prior=prior, seed=0)
            scores.append(psnr(mu_to_hu(res.image.double().numpy()[0, 0]), problem.gt_hu))
        gains.append(scores[1] - scores[0])
    assert min(gains) > 0 and np.mean(gains) > margin, gains
