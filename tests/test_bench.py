"""The benchmark harness (ctflow.bench, ``ctflow bench``) end to end on tiny configurations."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from ctflow.bench import (
    RESULTS,
    BenchConfig,
    PeakMemory,
    ResultStore,
    run_bench,
    square_resize,
    write_report,
)
from ctflow.cli import main
from ctflow.errors import InputError, MethodError, OutputError, PriorError
from ctflow.metrics import psnr
from ctflow.priors import GaussianPrior
from ctflow.units import MU_WATER_PER_MM

SIZE = 32
TASKS = ("ct30", "inpaint-box")
FLOW = "conjugate"
METHODS = ("fbp", "cgls", FLOW)
FLOW_OPTIONS = {FLOW: {"w": 20.0}}  # per-method override (stronger guidance than default)


def gaussian_prior(size: int) -> GaussianPrior:
    """Pixel-wise Gaussian fitted to training phantoms, in model space x = HU/1000."""
    from ctflow.phantoms import PhantomDataset

    train = PhantomDataset.split("train", size=size, length=32)
    x = torch.stack([train[i][0] for i in range(len(train))]).double() / 1000.0
    prior = GaussianPrior(x.mean(0), x.var(0).clamp_min(1e-3))
    prior.scale, prior.offset = 1.0 / MU_WATER_PER_MM, -1.0  # x = μ/μ_w − 1 = HU/1000
    return prior


def read_csv(path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["method"]: row for row in csv.DictReader(fh)}


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results"
    config = BenchConfig(tasks=TASKS, methods=METHODS, size=SIZE, images=2, seeds=(0,),
                         prior=gaussian_prior(SIZE), options=FLOW_OPTIONS, out=out)
    summary = run_bench(config, progress=False)
    return config, out, summary


def test_end_to_end_tables(bench):
    config, out, summary = bench
    assert summary["new"] == len(TASKS) * len(METHODS) * 2 and summary["skipped"] == 0
    for name in ("report.md", "machine.json", "config.json", "ct30.csv", "inpaint-box.csv"):
        assert (out / name).is_file(), name
    for task in TASKS:
        assert (out / f"{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ct = read_csv(out / "ct30.csv")
    assert list(ct) == list(METHODS)  # configured order, one row per method
    for method, row in ct.items():
        assert row["task"] == "ct30" and int(row["size"]) == SIZE
        assert int(row["n"]) == 2 and int(row["failed"]) == 0 and row["error"] == ""
        assert 10.0 < float(row["psnr_mean"]) < 120.0
        assert 0.0 < float(row["ssim_mean"]) <= 1.0
        assert 0.0 < float(row["rmse_hu_mean"]) < 1000.0
        assert float(row["psnr_std"]) >= 0.0 and float(row["seconds_mean"]) > 0.0
        assert float(row["peak_mb_max"]) >= 0.0
        assert (float(row["nfe_mean"]) > 0) == (method == FLOW)
    # 30 views of a 32² image over-determine it: least squares beats FBP's filtering.
    assert float(ct["cgls"]["psnr_mean"]) > float(ct["fbp"]["psnr_mean"]) + 3.0

    inp = read_csv(out / "inpaint-box.csv")
    assert list(inp) == list(METHODS)
    assert int(inp["fbp"]["n"]) == 0 and int(inp["fbp"]["failed"]) == 2
    assert inp["fbp"]["error"] and inp["fbp"]["psnr_mean"] == ""
    # CGLS leaves the hole at the minimum-norm value 0 (μ = 0: air); the prior fills it.
    assert float(inp[FLOW]["psnr_mean"]) > float(inp["cgls"]["psnr_mean"]) + 2.5


def test_table_numbers_match_records(bench):
    _, out, summary = bench
    recs = records(out)
    assert len(recs) == summary["new"] and len({r["key"] for r in recs}) == len(recs)
    ct = read_csv(out / "ct30.csv")
    report = (out / "report.md").read_text()
    assert "## ct30" in report and "## inpaint-box" in report
    header = "| size | method | n | PSNR (dB) | SSIM | RMSE (HU) | s/image | peak MB | NFE |"
    assert header in report
    for method in METHODS:
        mine = [r for r in recs if r["task"] == "ct30" and r["method"] == method]
        values = np.array([r["psnr"] for r in mine])
        assert float(ct[method]["psnr_mean"]) == pytest.approx(values.mean(), rel=1e-12)
        assert float(ct[method]["psnr_std"]) == pytest.approx(values.std(ddof=1), rel=1e-12)
        cell = f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"
        assert f"| {SIZE} | {method} | 2 | {cell} |" in report
        assert all(r["mem_kind"] in ("rss", "maxrss-lower-bound") for r in mine)
    assert "| fbp | 0 | n/a:" in report and '{"conjugate": {"w": 20.0}}' in report
    # the overview: one row per method, mean PSNR per task, the best of ct30 in bold
    assert f"## Overview, {SIZE}²: mean PSNR (dB)" in report
    means = {m: float(ct[m]["psnr_mean"]) for m in METHODS}
    top = max(means, key=means.get)
    assert f"| {top} | **{means[top]:.2f}** |" in report
    assert f"| fbp | {means['fbp']:.2f} | – |" in report  # FBP has no inpainting score
    # The stored example is the scored reconstruction of image 0.
    folder = out / "examples" / f"ct30_{SIZE}"
    gt, rec = np.load(folder / "ground_truth.npy"), np.load(folder / "cgls.npy")
    first = next(r for r in recs if r["key"] == f"ct30|{SIZE}|cgls|0|0")
    assert psnr(rec, gt) == pytest.approx(first["psnr"], abs=1e-3)
    machine = json.loads((out / "machine.json").read_text())["machine"]
    assert machine["cores"] >= 1 and machine["torch"] == torch.__version__
    assert {"cpu", "ram_gb", "gpu", "python", "astra", "ctflow", "git_commit"} <= set(machine)


def test_resume_skips_finished_and_continues_interrupted(bench, tmp_path):
    config, out, summary = bench
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = run_bench(BenchConfig(**{**config.__dict__, "out": copy, "resume": True}),
                      progress=False)
    assert again["new"] == 0 and again["skipped"] == summary["new"]
    assert len(records(copy)) == summary["new"]
    # Without --resume an output folder holding results is refused.
    with pytest.raises(OutputError, match="resume"):
        run_bench(BenchConfig(**{**config.__dict__, "out": copy}), progress=False)
    # An interrupted run: the last two records lost, a third cut mid-line.
    lines = (copy / RESULTS).read_text().splitlines(keepends=True)
    (copy / RESULTS).write_text("".join(lines[:-3]) + lines[-3][:25])
    again = run_bench(BenchConfig(**{**config.__dict__, "out": copy, "resume": True}),
                      progress=False)
    assert again["new"] == 3 and again["skipped"] == summary["new"] - 3
    assert sorted(r["key"] for r in records(copy)) == sorted(r["key"] for r in records(out))
    # Changed options for a method that has results: refused, nothing appended.
    changed = {**config.__dict__, "out": copy, "resume": True, "options": {"cgls": {"iters": 3}}}
    with pytest.raises(InputError, match="another output folder"):
        run_bench(BenchConfig(**changed), progress=False)
    assert len(records(copy)) == summary["new"]


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["bench", "--tasks", "ct15", "--methods", "fbp,cgls", "--size", "16",
            "--images", "1", "--seeds", "0,1", "-o", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "4 solves run" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "## ct15" in report and "| 16 | cgls | 2 |" in report and "| 16 | fbp | 2 |" in report
    assert main(argv + ["--resume"]) == 0
    assert "0 solves run, 4 already stored" in capsys.readouterr().out
    assert main(argv) == 2  # results present, no --resume
    err = capsys.readouterr().err
    assert err.startswith("ctflow bench: error:") and err.count("\n") == 1
    assert main(["bench", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "ct30-1e5" in listing and "conjugate" in listing and "inpaint-box" in listing


@pytest.mark.parametrize("argv, message", [
    (["--methods", "nope"], "unknown method"),
    (["--tasks", "ct7"], "unknown task"),
    (["--opt", "cgls.nope=1"], "takes no option"),
    (["--opt", "tv.iters=3"], "not benchmarked"),
    (["--size", "x"], "integers"),
])
def test_cli_bad_input_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "bad"
    assert main(["bench", "--methods", "cgls", "--tasks", "ct15", "--size", "16", "--images",
                 "1", "-o", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (out / RESULTS).exists()


def test_prior_of_wrong_size_fails_before_any_solve(tmp_path):
    prior = GaussianPrior(torch.zeros(8, 8), torch.ones(8, 8))
    with pytest.raises(PriorError, match="8²"):
        run_bench(BenchConfig(tasks=["ct15"], methods=["cgls", FLOW], size=16, images=1,
                              prior=prior, out=tmp_path / "p"), progress=False)
    assert not (tmp_path / "p").exists()  # nothing written


def test_dicom_series_as_test_set(tmp_path):
    from pydicom.data import get_testdata_file

    from ctflow.io.dicom import read_series

    series = tmp_path / "series"
    series.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), series / "slice0.dcm")
    out = tmp_path / "out"
    summary = run_bench(BenchConfig(tasks=["ct30"], methods=["cgls"], size=16, images=4,
                                    data=series, out=out), progress=False)
    assert summary["new"] == 1  # one slice in the series
    hu = read_series(series).hu[0]
    expected = square_resize(np.maximum(hu, -1000.0), 16).astype(np.float32)
    gt = np.load(out / "examples" / "ct30_16" / "ground_truth.npy")
    np.testing.assert_allclose(gt, expected, atol=1e-3)
    row = read_csv(out / "ct30.csv")["cgls"]
    assert int(row["n"]) == 1 and float(row["psnr_mean"]) > 25.0
    assert "DICOM series series" in (out / "report.md").read_text()


def test_hdf5_file_as_test_set(tmp_path):
    from ctflow.bench.tasks import heldout_images
    from ctflow.io.hdf5 import SinogramFile, write_sinogram
    from ctflow.operators import ParallelBeam2D
    from ctflow.units import hu_to_mu

    images = np.stack(heldout_images(16, 2))
    op = ParallelBeam2D(image_size=16, views=40)
    x = torch.from_numpy(hu_to_mu(images.astype(np.float32)))[:, None]
    sino = op(x)[:, 0].numpy()
    path = tmp_path / "scan 1.h5"
    write_sinogram(path, SinogramFile(sinogram=sino, geometry=op.geometry, image_hu=images))
    out = tmp_path / "out"
    summary = run_bench(BenchConfig(methods=["cgls"], size=64, images=8, data=path, out=out),
                        progress=False)
    assert summary["new"] == 2  # the file's two slices, at the file's own size
    row = read_csv(out / "scan_1.csv")["cgls"]
    assert int(row["size"]) == 16 and int(row["n"]) == 2 and float(row["psnr_mean"]) > 30.0
    with pytest.raises(InputError, match="its own task"):
        run_bench(BenchConfig(tasks=["ct30"], methods=["cgls"], data=path,
                              out=tmp_path / "o2"), progress=False)
    write_sinogram(tmp_path / "nogt.h5", SinogramFile(sinogram=sino, geometry=op.geometry))
    with pytest.raises(InputError, match="ground truth"):
        run_bench(BenchConfig(methods=["cgls"], data=tmp_path / "nogt.h5",
                              out=tmp_path / "o3"), progress=False)


def test_peak_memory_sees_an_allocation():
    with PeakMemory(torch.device("cpu")) as small:
        np.ones(1000).sum()
    with PeakMemory(torch.device("cpu")) as big:
        a = torch.ones(40 * 2**20 // 4)  # 40 MiB
        float(a.sum())
        del a
    if big.kind != "rss":
        pytest.skip("resident high-water mark cannot be reset on this system")
    assert 38.0 < big.mb < 60.0 and small.mb < 5.0


def test_result_store_repairs_cut_line_and_rejects_garbage(tmp_path):
    path = tmp_path / RESULTS
    path.write_text('{"key": "a", "psnr": 1}\n{"key": "b", "ps')
    store = ResultStore(path)
    assert "a" in store and "b" not in store
    assert path.read_text() == '{"key": "a", "psnr": 1}\n'
    store.append({"key": "b", "psnr": 2.0})
    assert set(ResultStore(path).records) == {"a", "b"}
    path.write_text("not json\n")
    with pytest.raises(InputError, match="line 1"):
        ResultStore(path)
    with pytest.raises(InputError, match="no benchmark results"):
        write_report(tmp_path / "empty")


def test_bad_config_values(tmp_path):
    with pytest.raises(MethodError, match="unknown method"):
        run_bench(BenchConfig(methods=["nope"], out=tmp_path / "a"), progress=False)
    with pytest.raises(InputError, match="images"):
        run_bench(BenchConfig(methods=["cgls"], images=0, out=tmp_path / "a"), progress=False)
    with pytest.raises(OutputError, match="does not exist"):
        run_bench(BenchConfig(methods=["cgls"], tasks=["ct15"], size=16, images=1,
                              out=tmp_path / "missing" / "deeper"), progress=False)


def test_warm_projector_builds_every_factor_copy_the_solvers_use(private_cache):
    """After the warm-up, A⁺y, P x and the normal-equation solve (the float32 and float64
    SVD factors, kept and kept + tail) add no copy: nothing of the set-up is timed."""
    from ctflow.bench import warm_projector
    from ctflow.operators import ParallelBeam2D

    op = ParallelBeam2D(image_size=16, views=12, projection="svd")
    warm_projector(op)
    copies = set(op.svd()._copies)
    cpu = torch.device("cpu")
    assert {(cpu, torch.float32, False), (cpu, torch.float64, False),
            (cpu, torch.float64, True)} <= copies
    x = torch.rand(2, 1, 16, 16)
    y = op(x)
    op.projector(x), op.pinv(y), op.solve_normal(op.adjoint(y), 0.1)
    assert set(op.svd()._copies) == copies


def test_warm_projector_runs_once_per_operator_and_device(private_cache, monkeypatch):
    """Tasks share one operator across their images: a second warm-up does no work."""
    from ctflow.bench import warm_projector
    from ctflow.operators import ParallelBeam2D

    op = ParallelBeam2D(image_size=16, views=12)
    warm_projector(op)
    monkeypatch.setattr(op, "projector", lambda *a, **k: pytest.fail("warmed twice"))
    warm_projector(op)
    warm_projector(op, torch.device("cpu"))
    other = ParallelBeam2D(image_size=16, views=12)
    monkeypatch.setattr(other, "projector", lambda *a, **k: pytest.fail("not warmed"))
    with pytest.raises(pytest.fail.Exception, match="not warmed"):
        warm_projector(other)  # another operator is warmed on its own
