"""``ctflow study`` without Dask: the config is checked before any work, task seeds come
from task keys, the statistics of the report are right on known inputs, and a serial run
stores every task once, resumes, and writes its report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ctflow.cli import main
from ctflow.errors import InputError, OutputError
from ctflow.study.config import load_config, parse_config
from ctflow.study.grid import expand, key_seed
from ctflow.study.runner import RESULTS, run_study
from ctflow.study.scoring import score
from ctflow.study.stats import paired, t_interval
from ctflow.study.worker import cache_builds, reset_cache

pytestmark = pytest.mark.usefixtures("private_cache")

TINY = """
[study]
size = 32
[data]
source = "phantom"
images = 3
[acquisition]
views = [15, 30]
photons = ["none", 1e5]
[methods.fbp]
[methods.sirt]
iters = 10
[metrics]
region_hu_window = [-200, 300]
[report]
reference = "sirt"
examples = 1
"""


def _write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


BAD = [
    ('[study]\nsize = 32\n[data]\nsource = "phantom"\n[acquisition]\nviews = [15, "x"]\n'
     "[methods.fbp]\n", 'acquisition.views: expected positive integers, got "x"'),
    ('[data]\nsource = "phantom"\n[methods.fbp]\n[acquisition]\nphotons = [-5]\n',
     "acquisition.photons"),
    ('[data]\nsource = "mri"\n[methods.fbp]\n', "data.source"),
    ('[data]\nsource = "phantom"\n[methods.nope]\n', "methods.nope: unknown method"),
    ('[data]\nsource = "phantom"\n[methods.tv]\nbogus = 3\n',
     "methods.tv.bogus: method tv takes no such option"),
    ('[data]\nsource = "phantom"\n[methods.fbp]\n[report]\nreference = "tv"\n',
     "report.reference"),
    ('[data]\nsource = "phantom"\n[methods.fbp]\n[acquisition]\ngeometry = ["cone"]\n',
     "acquisition.geometry"),
    ('[data]\nsource = "phantom"\n[methods.fbp]\n[acquisition]\nviews = [10]\n'
     "dead_views = [6]\n", "acquisition.dead_views"),
    ('[data]\nsource = "dicom"\npath = "missing_folder"\n[methods.fbp]\n', "data.path"),
    ('[data]\nsource = "phantom"\n[methods.fbp]\n[metrics]\nregion_hu_window = [300, 100]\n',
     "metrics.region_hu_window"),
    ('[data]\nsource = "phantom"\n[methods.fbp]\n[study]\nsize = 32\nsedes = [1]\n',
     "study.sedes: unknown key"),
    ('[data]\nsource = "phantom"\n[methods.fbp]\n[extra]\n', "extra: unknown section"),
    ('[data]\nsource = "phantom"\n[methods.fbp]\n[study]\nsize = 32\nprior = "no-such-prior"\n'
     "[methods.conjugate]\n", "study.prior"),
    ('[data]\nsource = "phantom"\nimages = 2\n[methods.fbp]\n[report]\nexamples = 5\n',
     "report.examples"),
    ("[data\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_config_fails_before_any_work(tmp_path, capsys, text, message):
    """Each bad key gives one line naming the file and the key; nothing is written."""
    config = _write(tmp_path, text)
    out = tmp_path / "out"
    code = main(["study", str(config), "-o", str(out), "--serial", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ctflow study: error: study.toml: "), err
    assert message in err
    assert not out.exists()


def test_grid_seeds_come_from_task_keys(tmp_path):
    """Same config, same tasks and seeds; every method of one problem sees the same noise
    seed; the seeds are the hash of the key, whatever the order."""
    config = load_config(_write(tmp_path, TINY))
    tasks = expand(config)
    assert len(tasks) == 3 * 4 * 2 and len({t["key"] for t in tasks}) == len(tasks)
    assert tasks == expand(load_config(_write(tmp_path, TINY, "again.toml")))
    problems: dict[str, set[int]] = {}
    for t in tasks:
        problems.setdefault(t["key"].rsplit("|", 1)[0], set()).add(t["noise_seed"])
        assert t["solver_seed"] == key_seed(t["key"])
    assert all(len(seeds) == 1 for seeds in problems.values())
    assert len({next(iter(s)) for s in problems.values()}) == len(problems)
    assert [t["example"] for t in tasks].count(True) == 4 * 2  # image 0, every setting


def test_t_interval_and_paired_differences_on_known_values():
    iv = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) · s / √n
    assert iv.n == 5 and iv.mean == pytest.approx(3.0)
    assert iv.low == pytest.approx(3.0 - half) and iv.high == pytest.approx(3.0 + half)
    single = t_interval([7.0])
    assert single.mean == 7.0 and math.isnan(single.low)
    base = {"geometry": "parallel", "range_deg": None, "views": 30, "photons": None,
            "dead_views": 0}
    records = []
    for image, (a, b) in enumerate([(30.0, 28.0), (31.0, 28.5), (29.0, 27.5)]):
        for seed in (0, 1):  # seed-averaged first: ±0.5 around a and b
            records.append({**base, "image_index": image, "method": "x", "psnr": a + seed - 0.5})
            records.append({**base, "image_index": image, "method": "ref", "psnr": b})
    diff = next(iter(paired(records, "psnr", "ref").values()))
    expected = t_interval([2.0, 2.5, 1.5])
    assert diff.n == 3 and diff.mean == pytest.approx(2.0)
    assert (diff.low, diff.high) == pytest.approx((expected.low, expected.high))


def test_region_scores_on_known_images():
    gt = np.full((32, 32), -1000.0)
    gt[8:24, 8:24] = 40.0  # soft tissue square: the window's region
    image = gt.copy()
    image[8:24, 8:24] += 10.0
    image[0, 0] += 500.0  # outside the region: must not count
    s = score(image, gt, ("psnr", "ssim", "rmse_hu"), window=(-160.0, 240.0))
    assert s["region_pixels"] == 256
    assert s["rmse_hu_region"] == pytest.approx(10.0)
    assert s["psnr_region"] == pytest.approx(20 * math.log10(400.0 / 10.0))
    assert s["rmse_hu"] > s["rmse_hu_region"]
    mask = np.zeros((32, 32), bool)
    mask[0, 0] = True
    assert score(image, gt, ("rmse_hu",), mask=mask)["rmse_hu_region"] == pytest.approx(500.0)


def test_serial_study_report_and_resume(tmp_path):
    """A serial run stores each task once and writes a report whose numbers are the
    t-intervals of the stored records; a second run needs --resume and then only runs what
    the grown grid adds; a cut-short last line is dropped and redone."""
    config = load_config(_write(tmp_path, TINY))
    out = tmp_path / "out"
    reset_cache()
    first = run_study(config, out, serial=True, progress=False)
    assert first["new"] == 24 and first["failed"] == 0 and first["lost"] == 0
    assert cache_builds() == {"operators": 2, "priors": 0}  # one per geometry, reused
    lines = (out / RESULTS).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len({r["key"] for r in records}) == 24
    for name in ("report.md", "summary.csv", "curves_views.png", "curves_dose.png",
                 "paired_views.png", "montage_image0.png", "machine.json"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 8
    row = next(r for r in rows if r["method"] == "fbp" and r["views"] == "15"
               and r["photons"] == "none")
    values = [r["psnr"] for r in records if r["method"] == "fbp" and r["views"] == 15
              and r["photons"] is None]
    iv = t_interval(values)
    assert float(row["psnr_mean"]) == pytest.approx(iv.mean)
    assert float(row["psnr_ci_low"]) == pytest.approx(iv.low)
    assert int(row["psnr_images"]) == 3 and int(row["solved"]) == 3
    text = (out / "report.md").read_text()
    assert f"{iv.mean:.2f} ± {iv.half:.2f}" in text and "In the region" in text

    with pytest.raises(OutputError, match="--resume"):
        run_study(config, out, serial=True, progress=False)
    # A crash while writing: the last line cut short is dropped and that task redone.
    (out / RESULTS).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    grown = load_config(_write(tmp_path, TINY.replace("views = [15, 30]", "views = [15, 30, 45]")))
    again = run_study(grown, out, serial=True, resume=True, progress=False, report=False)
    assert again["new"] == 1 + 12 and again["skipped"] == 23
    keys = [json.loads(x)["key"] for x in (out / RESULTS).read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 36
    changed = load_config(_write(tmp_path, TINY.replace("iters = 10", "iters = 11")))
    with pytest.raises(InputError, match="sirt results made with options"):
        run_study(changed, out, serial=True, resume=True, progress=False)


def test_bad_worker_count_writes_nothing(tmp_path, capsys):
    config = _write(tmp_path, TINY)
    out = tmp_path / "out"
    assert main(["study", str(config), "-o", str(out), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("ctflow study: error: --workers must be "
                                               "positive, got 0")
    assert not out.exists()


def test_mask_of_the_wrong_shape_is_refused(tmp_path):
    bad = tmp_path / "mask.npy"
    np.save(bad, np.zeros((16, 16), bool))
    with pytest.raises(InputError, match=r"metrics\.region_mask: mask\.npy: expected a 32x32"):
        parse_config({"study": {"size": 32}, "data": {"source": "phantom"},
                      "methods": {"fbp": {}}, "metrics": {"region_mask": "mask.npy"}},
                     base=tmp_path)


def test_acquisition_geometries_and_dead_views():
    """Angular range and geometry reach the operator; dead views read zero, chosen by the
    problem's noise seed (the same rows for every method)."""
    from ctflow.study.worker import WorkerCache, measure

    cache = WorkerCache()
    fan = cache.operator("fan", 90.0, 20, 32, "cpu")
    assert type(fan).__name__ == "FanBeam2D" and fan.geometry.type == "fan"
    assert fan.geometry.angles[0] == 0.0
    assert fan.geometry.angles[-1] == pytest.approx(math.radians(90.0) * 19 / 20)
    full = cache.operator("parallel", None, 16, 32, "cpu")
    assert full.geometry.angles[-1] == pytest.approx(math.pi * 15 / 16)
    assert cache.operator("fan", 90.0, 20, 32, "cpu") is fan and cache.builds["operators"] == 2
    gt = np.full((32, 32), -1000.0)
    gt[8:24, 8:24] = 0.0
    task = {"photons": None, "noise_seed": 7, "dead_views": 3, "views": 16}
    y, sigma = measure(gt, full, task)
    dead = [v for v in range(16) if not y[0, 0, v].any()]
    assert len(dead) == 3 and sigma == 0.0
    again, _ = measure(gt, full, task)
    assert torch.equal(y, again)
    other, _ = measure(gt, full, {**task, "noise_seed": 8})
    assert [v for v in range(16) if not other[0, 0, v].any()] != dead



def test_batches_are_small_and_longest_first():
    """16 batches per worker, flow tasks alone and first, then classical batches by
    decreasing view count; every task exactly once."""
    from ctflow.study.runner import BATCHES_PER_WORKER, batches

    def task(method: str, views: int, k: int) -> dict:
        return {"key": f"{method}-{views}-{k}", "method": method, "geometry": "parallel",
                "range_deg": None, "views": views}

    tv = [task("tv", v, k) for k in range(32) for v in (30, 60)]
    flow = [task("conjugate", 30, k) for k in range(3)]
    out = batches(tv + flow, workers=2)
    per_batch = math.ceil(len(tv) / (BATCHES_PER_WORKER * 2))
    assert per_batch == 2
    assert [len(b) for b in out[:3]] == [1, 1, 1]
    assert all(b[0]["method"] == "conjugate" for b in out[:3])
    assert all(len(b) == per_batch for b in out[3:])
    views = [b[0]["views"] for b in out[3:]]
    assert views == sorted(views, reverse=True) and views[0] == 60
    assert all(len({t["views"] for t in b}) == 1 for b in out)
    keys = [t["key"] for b in out for t in b]
    assert sorted(keys) == sorted(t["key"] for t in tv + flow)
    assert [len(b) for b in batches(tv, workers=1)] == [4] * 16  # 64 tasks in 16 batches
    assert [len(b) for b in batches(tv * 8, workers=1)] == [16] * 32  # at most MAX_BATCH
