"""Faults in the data: dead and saturated views and detector columns are found
(``ctflow.consistency``), left out of the problem, and reported in ``res.info`` and on the
CLI; clean data are left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import ctflow
from ctflow.cli import main
from ctflow.consistency import (
    MaskedParallelBeam2D,
    find_inconsistent,
    masked_problem,
    reduced_operator,
)
from ctflow.errors import MethodError
from ctflow.io.hdf5 import SinogramFile, read_sinogram, write_sinogram
from ctflow.metrics import evaluate
from ctflow.operators import FanBeam2D, ParallelBeam2D, dot_test, idempotence_error
from ctflow.phantoms import phantom
from ctflow.units import hu_to_mu, mu_to_hu

pytestmark = pytest.mark.usefixtures("private_cache")

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"
DEAD_VIEW = 7
DEAD_COLUMN = 30


def _example(name: str = "chest64_60v.h5"):
    data = read_sinogram(EXAMPLES / name)
    y = torch.from_numpy(np.ascontiguousarray(data.sinogram[0]))[None, None].float()
    return data, ctflow.operators.make_ct_operator(data.geometry), y


def _fault(y: torch.Tensor, kind: str) -> torch.Tensor:
    out = y.clone()
    if kind == "dead view":
        out[..., DEAD_VIEW, :] = 0.0
    elif kind == "saturated view":
        out[..., DEAD_VIEW, :] = 50.0
    elif kind == "dead column":
        out[..., DEAD_COLUMN] = 0.0
    elif kind == "saturated column":
        out[..., DEAD_COLUMN] = 20.0
    return out


# -- detection ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["chest64_60v.h5", "chest64_60v_1e5.h5"])
@pytest.mark.parametrize("kind, views, columns", [
    ("dead view", [DEAD_VIEW], []), ("saturated view", [DEAD_VIEW], []),
    ("dead column", [], [DEAD_COLUMN]), ("saturated column", [], [DEAD_COLUMN])])
def test_faults_are_found_exactly(name, kind, views, columns):
    _, op, y = _example(name)
    report = find_inconsistent(_fault(y, kind), op)
    assert report.masked_views == views
    assert report.masked_detectors == columns
    assert not report.capped


def test_several_faults_at_once():
    _, op, y = _example("chest64_60v_1e5.h5")
    bad = y.clone()
    bad[..., [3, 20, 41], :] = 0.0
    bad[..., 50, :] = 1e4  # photon starvation: a huge reading
    bad[..., 40:42] = 0.0  # two neighbouring dead columns
    report = find_inconsistent(bad, op)
    assert report.masked_views == [3, 20, 41, 50]
    assert report.masked_detectors == [40, 41]


def test_batch_masks_the_union():
    _, op, y = _example()
    batch = torch.cat([_fault(y, "dead view"), _fault(y, "dead column")])
    report = find_inconsistent(batch, op)
    assert report.masked_views == [DEAD_VIEW]
    assert report.masked_detectors == [DEAD_COLUMN]


@pytest.mark.parametrize("kind", ["chest", "abdomen", "head"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("geometry", ["parallel60", "fan60", "parallel30"])
def test_clean_data_are_not_masked(kind, seed, geometry):
    op = {"parallel60": lambda: ParallelBeam2D(64, 60), "fan60": lambda: FanBeam2D(64, 60),
          "parallel30": lambda: ParallelBeam2D(64, 30)}[geometry]()
    x = torch.from_numpy(hu_to_mu(phantom(kind, 64, seed=200 + seed))).float()[None, None]
    for photons in (None, 1e5):
        y = ctflow.simulate(x, op, photons=photons, seed=seed)
        report = find_inconsistent(y, op)
        assert not report.any and not report.capped, (photons, report)


@pytest.mark.parametrize("name", ["chest64_60v.h5", "chest64_60v_1e5.h5",
                                  "chest128_60v.h5", "chest128_60v_1e5.h5"])
def test_shipped_examples_are_not_masked(name):
    _, op, y = _example(name)
    report = find_inconsistent(y, op)
    assert not report.any and not report.capped


# -- the reduced problem --------------------------------------------------------------------
def test_reduced_operator_leaves_out_rows_exactly():
    op = ParallelBeam2D(32, 30)  # 32²: the masked projector's SVD takes a moment only
    keep_v = np.ones(30, dtype=bool)
    keep_v[DEAD_VIEW] = False
    keep_d = np.ones(op.out_shape[1], dtype=bool)
    keep_d[20] = False
    sub = reduced_operator(op, keep_v, keep_d)
    assert isinstance(sub, MaskedParallelBeam2D) and sub.family == "ct"
    assert sub.out_shape == (29, op.out_shape[1])
    assert np.array_equal(sub.geometry.angles, np.delete(op.geometry.angles, DEAD_VIEW))
    x = torch.from_numpy(hu_to_mu(phantom("chest", 32, seed=0))).float()[None, None]
    expected = op(x)[..., keep_v, :]
    expected[..., 20] = 0.0
    assert torch.allclose(sub(x), expected)
    assert dot_test(sub) < 1e-10
    assert idempotence_error(sub) < 1e-4
    # the projector keeps exactly what the kept rows see: A_m P x = A_m x
    assert torch.allclose(sub(sub.projector(x)), sub(x), rtol=0, atol=1e-4)
    # and differs from the unmasked operator's: the masked column's rows are gone
    assert not torch.allclose(sub.projector(x), reduced_operator(
        op, keep_v, np.ones_like(keep_d)).projector(x), rtol=0, atol=1e-4)


def test_masked_problem_zeroes_columns_or_fills_them_for_fbp():
    _, op, y = _example()
    report = find_inconsistent(_fault(_fault(y, "dead view"), "dead column"), op)
    y_bad = _fault(_fault(y, "dead view"), "dead column")
    y_zero, sub = masked_problem(y_bad, op, report)
    y_fill, _ = masked_problem(y_bad, op, report, fill=True)
    assert y_zero.shape == (1, 1, 59, op.out_shape[1])
    assert torch.all(y_zero[..., DEAD_COLUMN] == 0)
    keep_v = [v for v in range(60) if v != DEAD_VIEW]
    between = (y[..., keep_v, DEAD_COLUMN - 1] + y[..., keep_v, DEAD_COLUMN + 1]) / 2
    assert torch.allclose(y_fill[..., DEAD_COLUMN], between)
    assert torch.equal(y_fill[..., :DEAD_COLUMN], y[..., keep_v, :DEAD_COLUMN])


# -- reconstruct and the CLI ------------------------------------------------------------------
def _psnr(res, gt_hu) -> float:
    return evaluate(mu_to_hu(res.image.detach().double().numpy()[0, 0]), gt_hu)["psnr"]


@pytest.fixture(scope="module")
def prior():
    return ctflow.load_prior("default")


# PSNR (dB) a method may lose to the one dead view after masking, against its own clean
# result (64² chest example, noiseless; measured: fbp 0.05, tv 0.01, conjugate 0.3,
# pigfm 0.8, msflow 1.7 — one view of 60 less)
MARGIN_DB = 2.5


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fbp", "tv", "conjugate", "msflow", "pigfm"])
def test_dead_view_reconstructions_stay_good(method, prior):
    data, op, y = _example()
    gt = data.image_hu[0]
    bad = _fault(y, "dead view")
    fbp_bad = _psnr(ctflow.reconstruct(bad, op, method="fbp", consistency="off"), gt)
    clean = ctflow.reconstruct(y, op, method=method, prior=prior)
    res = ctflow.reconstruct(bad, op, method=method, prior=prior)
    assert clean.info["masked_views"] == [] and clean.info["warnings"] == []
    assert res.info["masked_views"] == [DEAD_VIEW] and res.info["masked_detectors"] == []
    assert len(res.info["warnings"]) == 1 and "view" in res.info["warnings"][0]
    assert res.image.shape == (1, 1, 64, 64)
    assert _psnr(res, gt) >= fbp_bad
    assert _psnr(res, gt) >= _psnr(clean, gt) - MARGIN_DB


@pytest.mark.slow
def test_dead_column_conjugate_stays_good(prior):
    data, op, y = _example()
    gt = data.image_hu[0]
    bad = _fault(y, "dead column")
    fbp_bad = _psnr(ctflow.reconstruct(bad, op, method="fbp", consistency="off"), gt)
    for method in ("fbp", "conjugate"):
        res = ctflow.reconstruct(bad, op, method=method, prior=prior)
        assert res.info["masked_detectors"] == [DEAD_COLUMN]
        assert _psnr(res, gt) >= fbp_bad


def test_consistency_off_uses_the_data_as_given():
    _, op, y = _example()
    bad = _fault(y, "dead view")
    off = ctflow.reconstruct(bad, op, method="fbp", consistency="off")
    assert "masked_views" not in off.info
    assert torch.equal(off.image, ctflow.operators.fbp(bad, op))
    with pytest.raises(MethodError, match="consistency"):
        ctflow.reconstruct(bad, op, method="fbp", consistency="maybe")


def test_cli_warns_once_and_succeeds(tmp_path, capsys):
    data = read_sinogram(EXAMPLES / "chest64_60v.h5")
    sino = data.sinogram.copy()
    sino[0, DEAD_VIEW] = 0.0
    path = tmp_path / "dead.h5"
    write_sinogram(path, SinogramFile(sino, data.geometry, data.image_hu, data.metadata,
                                      data.attrs))
    assert main(["reconstruct", str(path), "--method", "fbp", "-o",
                 str(tmp_path / "r.npy")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("ctflow: warning:")]
    assert len(warnings) == 1 and f"views {DEAD_VIEW}" in warnings[0]
    assert main(["reconstruct", str(path), "--method", "fbp", "--consistency", "off",
                 "-o", str(tmp_path / "r2.npy")]) == 0
    assert "warning" not in capsys.readouterr().err
