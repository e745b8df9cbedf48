"""ΠGFM and OT-ODE (Euler baselines) on a Gaussian toy prior with exact velocity.

Each is checked against its guided ODE solved to 1e-11 by scipy (independent NumPy velocity).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from _scripts import load_script
from scipy.integrate import solve_ivp

import ctflow
from ctflow.errors import MethodError
from ctflow.operators import SuperResolution
from ctflow.priors.gaussian import GaussianPrior
from ctflow.solvers.common import seeded_noise
from ctflow.solvers.conjugate import conjugate
from ctflow.solvers.guidance import r2, record_size
from ctflow.solvers.pigfm import otode, pigfm

N = 4
NFES = (5, 10, 20, 40, 80)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_toy(noise: float = 0.0):
    """16-D Gaussian prior (random basis), ×2 average-pool SR (P is not diagonal here)."""
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(N * N, N * N, generator=g, dtype=torch.float64))
    mean = 0.3 * torch.randn(N, N, generator=g, dtype=torch.float64)
    var = 0.5 * torch.exp(torch.randn(N, N, generator=g, dtype=torch.float64))
    prior = GaussianPrior(mean, var, basis=u)
    op = SuperResolution(image_size=N, factor=2)
    y = op(prior.sample_data(1, seed=7))
    if noise:
        y = y + noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(8),
                                    dtype=y.dtype)
    return prior, op, y, u.numpy(), mean.numpy().ravel(), var.numpy().ravel()


def reference(prior_parts, op, y, start, weight, jacobian, noise=0.0, seed=0):
    u, m, s2 = prior_parts
    # P and A⁺ of ×2 average pooling as explicit matrices (columns = images of unit vectors)
    eye = torch.eye(N * N, dtype=torch.float64).reshape(N * N, 1, N, N)
    proj = op.projector(eye).reshape(N * N, N * N).numpy().T
    ytil = op.pinv(y).numpy().ravel()
    # noisy target for SR (all singular values 1/2): ŷ − P x̂1 = (ỹ − P x̂1)·s²/(s² + ρ)
    s_sq = 0.25

    def rhs(t, x):
        ct = (t * s2 - (1 - t)) / (t * t * s2 + (1 - t) ** 2)
        jac = u @ np.diag(ct) @ u.T
        v = m + jac @ (x - t * m)
        x1 = x + (1 - t) * v
        rho = noise**2 / max(r2(t), 1e-300)
        r = (ytil - proj @ x1) * s_sq / (s_sq + rho)
        guide = r + (1 - t) * jac.T @ r if jacobian else r
        return v + weight(t) * guide

    z = seeded_noise((1, 1, N, N), seed, op.pinv(y)).numpy().ravel()
    # noisy start: ŷ at x̂1 = 0, i.e. ỹ·s²/(s² + ρ_start)
    rho0 = noise**2 / max(r2(start), 1e-300)
    x0 = start * ytil * s_sq / (s_sq + rho0) + (1 - start) * z
    sol = solve_ivp(rhs, (start, 1.0 - 1e-10), x0, method="Radau", rtol=1e-11, atol=1e-12)
    return sol.y[:, -1]


def rel(image, ref):
    return float(np.linalg.norm(image.numpy().ravel() - ref) / np.linalg.norm(ref))


def slope(errs):
    return float(np.polyfit(np.log(NFES), np.log(errs), 1)[0])


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_pigfm_converges_first_order(noise):
    prior, op, y, *parts = make_toy(noise)
    w, tau = 10.0, 0.3
    ref = reference(parts, op, y, tau, lambda t: w * t * (1 - t), True, noise=noise)
    errs = [rel(pigfm(y, op, prior=prior, nfe=2 * k, w=w, tau=tau, jacobian=True,
                      noise_std=noise or None).image, ref) for k in NFES]
    assert -1.15 < slope(errs) < -0.85, errs
    assert errs[-1] < 0.01


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_otode_converges_first_order(noise):
    """c(t) = (1−t)/(t r_t²) (γ = 1): singular at t = 1 when noiseless, still first order."""
    prior, op, y, *parts = make_toy(noise)
    t0 = 0.2
    ref = reference(parts, op, y, t0, lambda t: (1 - t) / (t * r2(t)), True, noise=noise)
    errs = [rel(otode(y, op, prior=prior, nfe=2 * k, t0=t0, gamma=1.0, jacobian=True,
                      noise_std=noise or None).image, ref) for k in NFES]
    assert -1.15 < slope(errs) < -0.85, errs
    assert errs[-1] < 0.01


def test_pigfm_and_conjugate_integrate_the_same_ode():
    prior, op, y, *_ = make_toy()
    kw = dict(w=10.0, tau=0.3, jacobian=False)
    a = pigfm(y, op, prior=prior, nfe=400, **kw).image
    b = conjugate(y, op, prior=prior, nfe=400, lam=0.0, **kw).image
    assert float((a - b).norm() / b.norm()) < 1e-3
    # at 5 NFE they differ (different integrators)
    a5 = pigfm(y, op, prior=prior, nfe=5, **kw).image
    b5 = conjugate(y, op, prior=prior, nfe=5, lam=0.0, **kw).image
    assert float((a5 - b5).norm() / b5.norm()) > 1e-2


def test_nfe_counts_forward_and_vjp():
    prior, op, y, *_ = make_toy()
    res = ctflow.reconstruct(y, op, method="otode", prior=prior, nfe=10)
    assert res.nfe == 10 and len(res.info["steps"]) == 10  # tuned default: J_x̂1 ≈ I
    res = ctflow.reconstruct(y, op, method="otode", prior=prior, nfe=10, jacobian=True)
    assert res.nfe == 10 and len(res.info["steps"]) == 5  # forward + VJP per step
    res = ctflow.reconstruct(y, op, method="otode", prior=prior, nfe=7, jacobian=False)
    assert res.nfe == 7
    res = ctflow.reconstruct(y, op, method="pigfm", prior=prior, nfe=5, jacobian=True)
    assert res.nfe == 4 and len(res.info["steps"]) == 2
    res = ctflow.reconstruct(y, op, method="pigfm", prior=prior, nfe=5, jacobian=False)
    assert res.nfe == 5 and len(res.info["steps"]) == 5


def test_seeded_and_bad_input():
    prior, op, y, *_ = make_toy()
    a = otode(y, op, prior=prior, nfe=6, seed=3).image
    b = otode(y, op, prior=prior, nfe=6, seed=3).image
    c = otode(y, op, prior=prior, nfe=6, seed=4).image
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(MethodError):
        otode(y, op, prior=prior, t0=0.0)
    with pytest.raises(MethodError):
        pigfm(y, op, prior=prior, nfe=0)
    with pytest.raises(MethodError):
        pigfm(y, op, prior=prior, tau=-0.1)


def _tuning_table():
    from ctflow.solvers.guidance import DEFAULTS_FILE

    return json.loads(DEFAULTS_FILE.read_text(encoding="utf-8"))


GUIDED = ("conjugate", "conjugate-diffusion", "pigfm", "otode")


def test_tuned_defaults_are_the_validation_argmax():
    """Every guided sampler has its own records for every family at 5 NFE, each the best
    score of the validation grid of the run that chose it; the methods compared on one
    problem (family, image size, noise setting, mask kind) had grids of the same size."""
    from ctflow.solvers.common import FAMILIES

    table = _tuning_table()
    runs = table["tuning"]
    assert runs and all("split='val'" in run["images"] for run in runs)
    by_command = {run["command"]: run["grid"] for run in runs}
    sizes = {}
    for method in GUIDED:
        records = table["methods"][method]["tuned"]
        for family in FAMILIES:
            assert any(r["family"] == family and not r["jacobian"] and r["nfe"] == 5
                       for r in records), (method, family)
        for rec in records:
            variant = method + ("+vjp" if rec["jacobian"] else "")
            noisy = bool(rec.get("noisy", False))
            mask = rec.get("mask")
            grid = by_command[rec["tuned_by"]]
            rows = [g for g in grid if (g["variant"], g["family"], record_size(g),
                                        bool(g.get("noisy")), g.get("mask"), g["nfe"])
                    == (variant, rec["family"], record_size(rec), noisy, mask, rec["nfe"])]
            if not rec["jacobian"]:  # the methods compared with each other
                sizes.setdefault((rec["family"], record_size(rec), noisy, mask),
                                 set()).add(len(rows))
            names = [k for k in ("w", "tau", "gamma", "t0", "rho_scale", "lam", "order") if k in rec
                     and any(k in g for g in rows)]
            same = [g for g in rows if all(g[k] == rec[k] for k in names)]
            assert len(same) == 1 and same[0]["psnr_val"] == rec["psnr_val"], rec
            assert rec["psnr_val"] == max(g["psnr_val"] for g in rows), rec
    assert all(len(v) == 1 for v in sizes.values()), sizes  # same grid budget per kind


@pytest.mark.parametrize("method", GUIDED)
def test_defaults_resolve_per_method_family_jacobian_size_and_budget(method):
    from ctflow.solvers.guidance import resolve_options

    toy_op = make_toy()[1]
    records = _tuning_table()["methods"][method]["tuned"]
    keys = ("w", "tau", "gamma", "t0")
    keys = (*keys, "rho_scale")
    sizes = sorted({record_size(r) for r in records})
    ops = [toy_op, *(SuperResolution(image_size=n, factor=2) for n in sizes)]
    for op, family in itertools.product(ops, {r["family"] for r in records}):
        size = op.in_shape[-1]
        for jac, noisy in itertools.product((False, True), (False, True)):
            mine = [r for r in records if r["family"] == family and r["jacobian"] == jac
                    and not r.get("mask")]  # these operators have no scattered mask
            # noisy calls use the noisy records, or the noiseless ones if there are none
            own = [r for r in mine if bool(r.get("noisy")) == noisy] or \
                [r for r in mine if not r.get("noisy")]
            if not own:
                continue
            # then the records of the tuned image size nearest to the operator's
            nearest = min({record_size(r) for r in own}, key=lambda n: (abs(n - size), n))
            own = sorted((r for r in own if record_size(r) == nearest), key=lambda r: r["nfe"])
            for nfe in (1, own[0]["nfe"], own[-1]["nfe"] + 1, 1000):
                opts = resolve_options(method, op, family, nfe=nfe, noisy=noisy, jacobian=jac)
                want = [r for r in own if r["nfe"] <= nfe]
                want = want[-1] if want else own[0]
                assert opts["tuned_at_nfe"] == want["nfe"] and opts["jacobian"] == jac
                assert opts["tuned_at_size"] == nearest
                assert all(opts[k] == want[k] for k in keys if k in want)
    # given options win over the tuned ones
    family = records[0]["family"]
    name = "t0" if method == "otode" else "tau"
    assert resolve_options(method, op, family, nfe=5, **{name: 0.123})[name] == 0.123


def test_tuned_record_prefers_the_nearest_tuned_size(monkeypatch):
    """Records without a size are 64² ones; a call takes the records of the nearest size
    (the smaller on a tie), after the noise filter."""
    from ctflow.solvers import guidance

    recs = [{"family": "ct", "jacobian": False, "nfe": 5, "w": 1.0},
            {"family": "ct", "jacobian": False, "nfe": 5, "w": 2.0, "size": 128},
            {"family": "ct", "jacobian": False, "nfe": 5, "w": 3.0, "noisy": True}]
    monkeypatch.setattr(guidance, "_table", lambda: {"methods": {"pigfm": {"tuned": recs}}})
    pick = guidance.tuned_record
    assert [pick("pigfm", "ct", False, 5, size=n)["w"] for n in (32, 64, 95, 96, 97, 256)] \
        == [1.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    assert pick("pigfm", "ct", False, 5)["w"] in (1.0, 2.0)  # any size
    assert pick("pigfm", "ct", False, 5, noisy=True, size=128)["w"] == 3.0  # noise first


def test_scattered_masks_take_their_own_records(monkeypatch):
    """Records tagged "mask": "scattered" serve scattered inpainting masks only; a box mask
    (or a family without such records) takes the untagged ones."""
    from ctflow.operators import Inpainting
    from ctflow.solvers import guidance

    recs = [{"family": "inpainting", "jacobian": False, "nfe": 5, "w": 1.0, "lam": 0.0},
            {"family": "inpainting", "jacobian": False, "nfe": 5, "w": 2.0, "lam": -1.0,
             "mask": "scattered"},
            {"family": "ct", "jacobian": False, "nfe": 5, "w": 3.0, "lam": 0.0}]
    monkeypatch.setattr(guidance, "_table", lambda: {"methods": {"conjugate": {
        "generic": {"w": 9.0, "lam": 0.0, "tau": 0.2, "jacobian": False}, "tuned": recs}}})
    box = torch.ones(32, 32, dtype=torch.bool)
    box[8:24, 8:24] = False
    scattered = torch.rand(32, 32, generator=torch.Generator().manual_seed(0)) > 0.7
    picks = [guidance.resolve_options("conjugate", Inpainting(m), None, nfe=5)
             for m in (box, scattered)]
    assert [(o["w"], o["lam"]) for o in picks] == [(1.0, 0.0), (2.0, -1.0)]
    assert guidance.tuned_record("conjugate", "ct", False, 5, mask="scattered")["w"] == 3.0


def test_tuning_run_records_the_argmax_per_budget_and_merges(tmp_path, monkeypatch):
    """bench_conjugate --tune: one record per budget, the best of its grid, saved to
    --tune-out; --write-defaults replaces the record and drops runs no record names."""
    bc = load_script("bench_conjugate")
    out = tmp_path / "tune.json"
    assert bc.main(["--tune", "--size", "16", "--prior", "gaussian-fit", "--images", "1",
                    "--tune-families", "inpainting", "--tune-methods", "pigfm",
                    "--tune-base-nfe", "2", "3", "--tune-w", "1", "3", "--tune-tau", "0.2",
                    "--tune-out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert [len([g for g in result["grid"] if g["nfe"] == k]) for k in (2, 3)] == [2, 2]
    for rec in result["chosen"]:
        rows = [g for g in result["grid"] if g["nfe"] == rec["nfe"]]
        assert rec["psnr_val"] == max(g["psnr_val"] for g in rows)
        assert rec["size"] == 16 and rec["method"] == "pigfm"
    table = {"methods": {"pigfm": {"tuned": [
        {"family": "inpainting", "size": 16, "jacobian": False, "nfe": 2, "w": 9.0,
         "tuned_by": "old run"}]}}, "tuning": [{"command": "old run", "grid": []}]}
    defaults = tmp_path / "defaults.json"
    defaults.write_text(json.dumps(table), encoding="utf-8")
    monkeypatch.setattr(bc, "DEFAULTS_FILE", defaults)
    assert bc.main(["--write-defaults", str(out)]) == 0
    merged = json.loads(defaults.read_text(encoding="utf-8"))
    assert [r["nfe"] for r in merged["methods"]["pigfm"]["tuned"]] == [2, 3]
    assert all(r["tuned_by"] == result["command"] for r in merged["methods"]["pigfm"]["tuned"])
    assert [run["command"] for run in merged["tuning"]] == [result["command"]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_bench_on_a_missing_gpu_is_refused_before_any_work():
    bc = load_script("bench_conjugate")
    with pytest.raises(SystemExit) as stop:
        bc.main(["--device", "cuda", "--prior", "no-such-prior"])
    assert stop.value.code == 2


def test_bench_targets_are_paired_per_image():
    """bench_conjugate's target lines: mean difference of per-image PSNR, its standard
    error std(d, ddof=1)/√n and the count of images ahead; without per-image scores the
    plain difference of the means."""
    bc = load_script("bench_conjugate")

    def row(method, nfe, scores):
        return {"task": "ct60", "method": method, "nfe_budget": nfe,
                "psnr": float(np.mean(scores)),
                "psnr_images": " ".join(f"{v:.4f}" for v in scores)}

    c5, p5 = row("conjugate", 5, [40.0, 42.0, 45.0]), row("pigfm", 5, [39.0, 42.5, 42.0])
    p100, tv = row("pigfm", 100, [41.0, 41.0, 41.0]), row("tv", 0, [30.0, 31.0, 32.0])
    d = np.array([1.0, -0.5, 3.0])
    assert bc.paired_difference(c5, p5) == (
        f"{d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(3):.2f} SE, ahead on 2/3 images")
    text = bc.targets([c5, p5, p100, tv])
    assert "C-ΠGFM@5 − ΠGFM@5 = +1.17 ± 1.01 SE, ahead on 2/3 images (met" in text
    assert "best ΠGFM@≥50 (NFE 100) = +1.33" in text and "C-ΠGFM@5 − TV = +11.33" in text
    old = {**c5, "psnr_images": ""}
    assert bc.paired_difference(old, p5) == "+1.17"
