"""ΠGFM and OT-ODE (Euler baselines) on a Gaussian toy prior with exact velocity.

Each is checked against its guided ODE solved to 1e-11 by scipy (independent NumPy velocity).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import ctflow
from ctflow.bench import guided
from ctflow.bench.gaussian_fit import fitted_gaussian_prior
from ctflow.bench.guided_report import paired_difference, targets
from ctflow.errors import MethodError, PriorError
from ctflow.operators import SuperResolution
from ctflow.priors.gaussian import GaussianPrior
from ctflow.priors.presets import FAMILIES, Presets, load_presets, select_record
from ctflow.solvers.common import seeded_noise
from ctflow.solvers.conjugate import GENERIC, conjugate
from ctflow.solvers.context import resolve_options, task_context
from ctflow.solvers.guidance import r2
from ctflow.solvers.pigfm import GENERIC_OTODE, GENERIC_PIGFM, otode, pigfm

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


PRIORS_DIR = Path(__file__).resolve().parents[1] / "data" / "priors"
TUNING_LOG = Path(__file__).resolve().parents[1] / "docs" / "tuning" / "guided.json"
GUIDED = ("conjugate", "conjugate-diffusion", "pigfm", "otode")
OPTION_KEYS = ("w", "tau", "gamma", "t0", "rho_scale", "lam", "order")


def _presets(name: str) -> Presets:
    presets = load_presets(PRIORS_DIR / f"{name}.presets.json")
    assert presets is not None
    return presets


def _toy_with(presets: Presets | None) -> GaussianPrior:
    prior = make_toy()[0]
    prior.presets = presets
    return prior


@pytest.mark.parametrize("name", ["phantom-64", "phantom-128"])
def test_tuned_presets_are_the_validation_argmax(name):
    """Every guided sampler has its own records for every family at 5 NFE in the presets of
    each shipped prior; each record tuned with that prior is the best score of the
    validation grid of the run that chose it (docs/tuning/guided.json); the methods
    compared on one problem (family, size, noise, mask kind) had grids of the same size."""
    presets = _presets(name)
    runs = json.loads(TUNING_LOG.read_text(encoding="utf-8"))["runs"]
    assert runs and all("split='val'" in run["images"] for run in runs)
    by_command = {run["command"]: run["grid"] for run in runs}
    sizes: dict[tuple, set[int]] = {}
    checked = 0
    for method in GUIDED:
        records = presets.records(method)
        for family in FAMILIES:
            assert any(r["family"] == family and not r["requires"]["jacobian"]
                       and r["nfe"] == 5 for r in records), (method, family)
        own = [r for r in records if r["tuned"]["prior"] == name]
        checked += len(own)
        for rec in own:
            jac = rec["requires"]["jacobian"]
            variant = method + ("+vjp" if jac else "")
            key = (variant, rec["family"], rec["size"], rec["noisy"], rec["mask"], rec["nfe"])
            rows = [g for g in by_command[rec["tuned"]["command"]]
                    if (g["variant"], g["family"], g.get("size", 64), bool(g.get("noisy")),
                        g.get("mask"), g["nfe"]) == key]
            if not jac:  # the methods compared with each other
                sizes.setdefault(key[1:5], set()).add(len(rows))
            opts = rec["options"]
            names = [k for k in OPTION_KEYS if k in opts and any(k in g for g in rows)]
            same = [g for g in rows if all(g[k] == opts[k] for k in names)]
            assert len(same) == 1 and same[0]["psnr_val"] == rec["tuned"]["psnr_val"], rec
            assert rec["tuned"]["psnr_val"] == max(g["psnr_val"] for g in rows), rec
    assert checked >= 30 and all(len(v) == 1 for v in sizes.values()), sizes


@pytest.mark.parametrize("method", GUIDED)
def test_presets_resolve_per_family_jacobian_noise_size_and_budget(method):
    """resolve_options follows the documented precedence over the shipped records."""
    presets = _presets("phantom-128")
    prior = _toy_with(presets)
    records = presets.records(method)
    sizes = sorted({r["size"] for r in records})
    ops = [make_toy()[1], *(SuperResolution(image_size=n, factor=2) for n in sizes)]
    generic = {"conjugate": GENERIC, "conjugate-diffusion": GENERIC, "pigfm": GENERIC_PIGFM,
               "otode": GENERIC_OTODE}[method]
    for op, family in itertools.product(ops, {r["family"] for r in records}):
        size = op.in_shape[-1]
        for jac, noisy in itertools.product((False, True), (False, True)):
            mine = [r for r in records if r["family"] == family
                    and r["requires"]["jacobian"] == jac and not r["mask"]]
            own = [r for r in mine if r["noisy"] == noisy] or [r for r in mine if not r["noisy"]]
            if not own:
                continue
            nearest = min({r["size"] for r in own}, key=lambda n: (abs(n - size), n))
            own = sorted((r for r in own if r["size"] == nearest), key=lambda r: r["nfe"])
            context = task_context(op, family, 0.1 if noisy else None)
            for nfe in (1, own[0]["nfe"], own[-1]["nfe"] + 1, 1000):
                opts = resolve_options(method, generic, prior, context, nfe, ("jacobian",),
                                       jacobian=jac)
                want = [r for r in own if r["nfe"] <= nfe]
                want = want[-1] if want else own[0]
                assert opts["tuned_at_nfe"] == want["nfe"] and opts["jacobian"] == jac
                assert opts["tuned_at_size"] == nearest and opts["presets"] == "phantom-128"
                assert all(opts[k] == v for k, v in want["options"].items())
    # given options win over the tuned ones
    name = "t0" if method == "otode" else "tau"
    context = task_context(ops[0], records[0]["family"])
    assert resolve_options(method, generic, prior, context, 5, **{name: 0.123})[name] == 0.123


def test_select_record_prefers_noise_then_the_nearest_tuned_size():
    """Noise first, then the nearest tuned size (the smaller on a tie), then the budget."""
    def rec(w, size, noisy=False, nfe=5):
        return {"family": "ct", "size": size, "noisy": noisy, "nfe": nfe, "options": {"w": w}}

    recs = [rec(1.0, 64), rec(2.0, 128), rec(3.0, 64, noisy=True), rec(4.0, 64, nfe=20)]
    pick = [select_record(recs, "ct", False, None, n, 5, {})["options"]["w"]
            for n in (32, 64, 95, 96, 97, 256)]
    assert pick == [1.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    assert select_record(recs, "ct", True, None, 128, 5, {})["options"]["w"] == 3.0
    assert select_record(recs, "ct", False, None, 64, 100, {})["options"]["w"] == 4.0
    assert select_record(recs, "sr", False, None, 64, 5, {}) is None
    assert select_record(recs, None, False, None, 64, 5, {}) is None


def test_scattered_masks_take_their_own_records():
    """Records tagged "mask": "scattered" serve scattered inpainting masks only; a box mask
    (or a family without such records) takes the untagged ones."""
    from ctflow.operators import Inpainting

    def rec(family, w, lam, mask=None):
        return {"family": family, "size": 32, "mask": mask, "nfe": 5,
                "requires": {"jacobian": False}, "options": {"w": w, "lam": lam}}

    presets = Presets(prior="toy", methods={"conjugate": [
        rec("inpainting", 1.0, 0.0), rec("inpainting", 2.0, -1.0, "scattered"),
        rec("ct", 3.0, 0.0)]})
    prior = _toy_with(presets)
    box = torch.ones(32, 32, dtype=torch.bool)
    box[8:24, 8:24] = False
    scattered = torch.rand(32, 32, generator=torch.Generator().manual_seed(0)) > 0.7
    picks = [resolve_options("conjugate", GENERIC, prior, task_context(Inpainting(m)), 5,
                             ("jacobian",)) for m in (box, scattered)]
    assert [(o["w"], o["lam"]) for o in picks] == [(1.0, 0.0), (2.0, -1.0)]
    assert [task_context(Inpainting(m)).mask for m in (box, scattered)] == [None, "scattered"]


def test_a_prior_without_presets_gets_generic_defaults_and_a_warning(caplog):
    """Never another prior's tuned values: no presets → the method's generic defaults."""
    prior = _toy_with(None)
    op = SuperResolution(image_size=64, factor=2)
    with caplog.at_level("WARNING", logger="ctflow.solvers"):
        opts = resolve_options("conjugate", GENERIC, prior, task_context(op), 5, ("jacobian",))
    assert {k: opts[k] for k in GENERIC} == GENERIC and opts["presets"] is None
    assert opts["tuned_at_nfe"] is None and "no tuned presets" in caplog.text
    shipped = resolve_options("conjugate", GENERIC, _toy_with(_presets("phantom-64")),
                              task_context(op), 5, ("jacobian",))
    assert shipped["w"] != GENERIC["w"]  # the shipped prior does have tuned values here


def test_user_prior_checkpoint_loads_its_own_presets(tmp_path):
    """A checkpoint's presets are the NAME.presets.json beside it, and only that file."""
    from ctflow.priors import load_prior
    from ctflow.priors.checkpoint import save_prior

    shipped = load_prior("phantom-64")
    assert shipped.presets is not None and shipped.presets.prior == "phantom-64"
    save_prior(shipped, tmp_path / "mine")
    mine = load_prior(str(tmp_path / "mine.json"))
    assert mine.presets is None
    (tmp_path / "mine.presets.json").write_text(json.dumps({
        "format": "ctflow-presets", "version": 1, "prior": "mine", "methods": {"conjugate": [
            {"family": "ct", "size": 64, "nfe": 5, "options": {"w": 7.0}}]}}))
    mine = load_prior(str(tmp_path / "mine.json"))
    assert mine.presets.records("conjugate")[0]["options"] == {"w": 7.0}
    (tmp_path / "mine.presets.json").write_text('{"format": "ctflow-presets", "version": 1, '
                                               '"methods": {"conjugate": [{"family": "mri"}]}}')
    with pytest.raises(PriorError, match="mine.presets.json"):
        load_prior(str(tmp_path / "mine.json"))


def test_tuning_run_records_the_argmax_per_budget_and_merges(tmp_path):
    """The guided samplers' tuning (ctflow.bench.guided, bench_conjugate --tune): one record
    per budget, the best of its grid, saved to the tuning result; write_defaults puts the
    records into the presets beside the tuned prior (replacing the one with the same
    selection key) and the grid into the log."""
    out = tmp_path / "tune.json"
    grids = {"w": [1.0, 3.0], "tau": [0.2], "gamma": [1.0], "t0": [0.2], "rho_scale": [10.0],
             "lam": [0.0], "order": [1]}
    run = guided.GuidedTuning(size=16, images=1, prior="gaussian-fit", command="tune-run",
                              grids=grids, families=["inpainting"], variants=["pigfm"],
                              base_nfe=[2, 3], out=str(out))
    got = guided.tune(run, fitted_gaussian_prior(16), guided.bench_images(16, 1, "val"))
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result == got and result["images"] == "heldout_images(16, 1, split='val')"
    assert [len([g for g in result["grid"] if g["nfe"] == k]) for k in (2, 3)] == [2, 2]
    assert len(result["chosen"]) == 2
    for rec in result["chosen"]:
        rows = [g for g in result["grid"] if g["nfe"] == rec["nfe"]]
        assert rec["psnr_val"] == max(g["psnr_val"] for g in rows)
        assert rec["w"] == next(g["w"] for g in rows if g["psnr_val"] == rec["psnr_val"])
        assert rec["size"] == 16 and rec["method"] == "pigfm"
    stem = tmp_path / "toy"
    (tmp_path / "toy.presets.json").write_text(json.dumps({
        "format": "ctflow-presets", "version": 1, "prior": "gaussian-fit", "methods": {"pigfm": [
            {"family": "inpainting", "size": 16, "nfe": 2, "requires": {"jacobian": False},
             "options": {"w": 9.0}, "tuned": {"command": "old run"}},
            {"family": "ct", "size": 16, "nfe": 2, "requires": {"jacobian": False},
             "options": {"w": 5.0}, "tuned": {"command": "kept"}}]}}))
    log = tmp_path / "log.json"
    guided.write_defaults([str(out)], log, str(stem))
    merged = load_presets(tmp_path / "toy.presets.json").records("pigfm")
    inpainting = [r for r in merged if r["family"] == "inpainting"]
    assert [r["nfe"] for r in inpainting] == [2, 3]
    assert all(r["tuned"]["command"] == result["command"] for r in inpainting)
    assert [r["options"]["w"] for r in merged if r["family"] == "ct"] == [5.0]
    assert [run["command"] for run in json.loads(log.read_text())["runs"]] == [result["command"]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_bench_on_a_missing_gpu_is_refused_before_any_work():
    """scripts/bench_conjugate.py --device cuda without a GPU: a usage error (exit 2) before
    any prior is loaded."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_conjugate.py"
    done = subprocess.run([sys.executable, str(script), "--device", "cuda", "--prior",
                           "no-such-prior"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no CUDA GPU is available" in done.stderr


def test_bench_targets_are_paired_per_image():
    """bench_conjugate's target lines: mean difference of per-image PSNR, its standard
    error std(d, ddof=1)/√n and the count of images ahead; without per-image scores the
    plain difference of the means (ctflow.bench.guided_report)."""

    def row(method, nfe, scores):
        return {"task": "ct60", "method": method, "nfe_budget": nfe,
                "psnr": float(np.mean(scores)),
                "psnr_images": " ".join(f"{v:.4f}" for v in scores)}

    c5, p5 = row("conjugate", 5, [40.0, 42.0, 45.0]), row("pigfm", 5, [39.0, 42.5, 42.0])
    p100, tv = row("pigfm", 100, [41.0, 41.0, 41.0]), row("tv", 0, [30.0, 31.0, 32.0])
    d = np.array([1.0, -0.5, 3.0])
    assert paired_difference(c5, p5) == (
        f"{d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(3):.2f} SE, ahead on 2/3 images")
    text = targets([c5, p5, p100, tv])
    assert "C-ΠGFM@5 − ΠGFM@5 = +1.17 ± 1.01 SE, ahead on 2/3 images (met" in text
    assert "best ΠGFM@≥50 (NFE 100) = +1.33" in text and "C-ΠGFM@5 − TV = +11.33" in text
    old = {**c5, "psnr_images": ""}
    assert paired_difference(old, p5) == "+1.17"
