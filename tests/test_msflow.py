"""MS-Flow: monotone objective, stitching consistency, exact proximal step, API behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ctflow
from ctflow.bench.latent import budget_nfe
from ctflow.errors import MethodError
from ctflow.operators import GaussianBlur, Identity, Inpainting, LinearOperator, SuperResolution
from ctflow.priors import GaussianPrior
from ctflow.priors.presets import Presets, load_presets, select_record
from ctflow.solvers.context import mask_kind, resolve_options, task_context
from ctflow.solvers.dflow import rollout
from ctflow.solvers.latent_reg import euler_flow, euler_vjp, radial_reg, radial_reg_grad
from ctflow.solvers.msflow import GENERIC, msflow, prox_data

N = 8
ROOT = Path(__file__).resolve().parents[1]


def shipped_presets(name: str = "phantom-64") -> Presets:
    presets = load_presets(ROOT / "data" / "priors" / f"{name}.presets.json")
    assert presets is not None
    return presets


def preset_options(presets: Presets, method: str, family: str, size: int,
                   mask: str | None = None) -> dict:
    record = select_record(presets.records(method), family, False, mask, size, None, {})
    return dict(record["options"])


class Dense(LinearOperator):
    """A random dense matrix on N×N images (generic Krylov solve_normal), measurements
    shaped (rows/N, N)."""

    def __init__(self, rows: int, seed: int = 0):
        super().__init__((N, N), (rows // N, N))
        gen = torch.Generator().manual_seed(seed)
        self.mat = torch.randn(rows, N * N, generator=gen) / N

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(x.shape[0], -1) @ self.mat.T.to(x.dtype)).reshape(-1, *self.out_shape)

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y.reshape(y.shape[0], -1) @ self.mat.to(y.dtype)).reshape(y.shape[0], N, N)


def _prior(basis: bool = False) -> GaussianPrior:
    gen = torch.Generator().manual_seed(0)
    mean = 0.3 * torch.randn(N, N, generator=gen)
    var = 0.05 + 0.5 * torch.rand(N, N, generator=gen)
    u = torch.linalg.qr(torch.randn(N * N, N * N, generator=gen, dtype=torch.float64))[0]
    return GaussianPrior(mean, var, basis=u if basis else None)


def _mask() -> torch.Tensor:
    return torch.rand(N, N, generator=torch.Generator().manual_seed(3)) > 0.5


def _monotone(values: list[float]) -> bool:
    return all(b <= a + 1e-9 * abs(a) for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("basis,eta", [(False, 1.0), (True, 3.0)])
def test_objective_decreases_monotonically(basis: bool, eta: float) -> None:
    prior = _prior(basis)
    x1 = prior.sample_data(2, seed=1).float()
    op = Inpainting(_mask()) if not basis else Dense(40)
    y = op(x1)
    out = msflow(y, op, prior=prior, noise_std=0.01, iters=25, init="noise", eta=eta,
                 shooting=4, segment_steps=2, mu=300.0, lam=1.0)
    h = out.info["history"]
    assert len(h["objective"]) == 26
    assert _monotone(h["objective"])
    assert h["objective"][-1] < 0.5 * h["objective"][0]
    for i, f in enumerate(h["objective"]):
        assert f == pytest.approx(h["data"][i] + h["reg"][i] + h["match"][i], rel=1e-12)
    steps = out.info["steps"]
    assert steps["jf_tried"] == 25 * 4 * 2  # every block and image once per sweep
    if eta > 1.0:  # an overshooting Jacobian-free step must fall back to the exact gradient
        assert steps["grad_tried"] > 0 and steps["grad_accepted"] > 0


def test_large_mu_matches_plain_euler_rollout() -> None:
    """μ → large (geometric schedule 100 → 1e6): defects → 0 and the stitched image is the
    plain 8-step Euler rollout of the stitched z_0; a small fixed μ leaves visible defects."""
    prior = _prior()
    x1 = prior.sample_data(2, seed=1).float()
    op = Inpainting(_mask())
    y = op(x1)
    rel, defect = {}, {}
    for name, opts in (("small", {"mu": 10.0}),
                       ("large", {"mu": 100.0, "mu_growth": 1.1, "mu_max": 1e6})):
        out = msflow(y, op, prior=prior, noise_std=0.01, iters=150, init="noise",
                     shooting=4, segment_steps=2, lam=1.0, eta=1.0, **opts)
        plain = prior.to_physical(rollout(prior, out.info["z0"], 8))
        rel[name] = float((plain - out.image).norm() / out.image.norm())
        defect[name] = max(out.info["defects_rms"])
    assert out.info["history"]["mu"][-1] == 1e6
    assert rel["large"] < 1e-3 and defect["large"] < 3e-4
    assert rel["small"] > 10 * rel["large"]


def test_rollout_initialisation_starts_on_a_trajectory() -> None:
    """init="rollout": z_0 ~ N(0, I), z_k = Φ_{k−1}(z_{k−1}), so before any iteration the only
    defect is the last one (x is the data-consistent image, not Φ_{K−1})."""
    prior = _prior()
    op = Inpainting(_mask())
    y = op(prior.sample_data(1, seed=2).float())
    out = msflow(y, op, prior=prior, noise_std=0.01, iters=0, init="rollout", shooting=4,
                 segment_steps=2, mu=10.0, lam=1.0)
    defects = out.info["defects_rms"]
    assert max(defects[:-1]) < 1e-6 < defects[-1]
    again = msflow(y, op, prior=prior, noise_std=0.01, iters=3, init="rollout", shooting=4,
                   segment_steps=2, mu=10.0, lam=1.0, seed=5)
    assert _monotone(again.info["history"]["objective"])


def test_conjugate_warm_start() -> None:
    """init="conjugate": the image starts at the C-ΠGFM reconstruction (5 NFE), the states
    are its backward Euler run (K·M NFE), plus the M-NFE batched sweep over the segments."""
    prior = _prior()
    op = Inpainting(_mask())
    y = op(prior.sample_data(1, seed=2).float())
    warm = ctflow.reconstruct(y, op, method="conjugate", prior=prior, noise_std=0.01, nfe=5,
                              seed=4, task_family="inpainting")
    out = msflow(y, op, prior=prior, noise_std=0.01, iters=0, init="conjugate", shooting=4,
                 segment_steps=2, mu=10.0, lam=1.0, seed=4)
    assert out.nfe == 5 + 4 * 2 + 2
    assert torch.allclose(out.image, warm.image, atol=1e-6)
    more = msflow(y, op, prior=prior, noise_std=0.01, iters=4, init="conjugate", shooting=4,
                  segment_steps=2, mu=10.0, lam=1.0, seed=4)
    assert _monotone(more.info["history"]["objective"])
    assert more.info["history"]["data"][-1] < 0.5 * more.info["history"]["data"][0]
    with pytest.raises(MethodError, match="set-up"):
        msflow(y, op, prior=prior, init="conjugate", shooting=4, segment_steps=2, nfe=14)


def test_nfe_budget_is_respected() -> None:
    prior = _prior()
    op = Inpainting(_mask())
    y = op(prior.sample_data(1, seed=2).float())
    full = ctflow.reconstruct(y, op, method="msflow", prior=prior, noise_std=0.01, iters=12,
                              init="noise", mu=10.0)
    for cap in range(2, full.nfe + 1, 3):  # caps landing anywhere inside an iteration
        capped = ctflow.reconstruct(y, op, method="msflow", prior=prior, noise_std=0.01,
                                    iters=12, init="noise", mu=10.0, nfe=cap)
        assert 0 < capped.nfe <= cap, cap
        assert capped.info["history"]["nfe"][-1] == capped.nfe
    assert capped.nfe >= full.nfe - 3  # the last cap (≥ full.nfe − 2) leaves it nearly whole
    with pytest.raises(MethodError, match="set-up"):  # rollout needs K·M = 8 for its set-up
        ctflow.reconstruct(y, op, method="msflow", prior=prior, iters=1, init="rollout",
                           shooting=4, segment_steps=2, nfe=7)


def _operators() -> list[LinearOperator]:
    ops: list[LinearOperator] = [Identity(16), Inpainting(_mask().repeat(2, 2)),
                                 SuperResolution(16, 4), GaussianBlur(16, 1.5)]
    try:
        from ctflow.operators import FanBeam2D, ParallelBeam2D
    except ImportError:
        return ops
    return ops + [ParallelBeam2D(image_size=16, views=8),
                  FanBeam2D(image_size=16, views=8, source_origin_mm=60.0, origin_det_mm=40.0)]


@pytest.mark.parametrize("op", _operators(), ids=lambda o: type(o).__name__)
def test_prox_step_solves_normal_equations(op: LinearOperator) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, *op.in_shape, generator=gen)
    y = op(x) + 0.01 * torch.randn(2, 1, *op.out_shape, generator=gen)
    anchor = torch.randn(2, 1, *op.in_shape, generator=gen)
    sigma, mu = 0.3, 2.0
    rho = sigma**2 * mu
    sol = prox_data(op, y, anchor, sigma, mu, x0=anchor, tol=1e-7, maxiter=500)
    rhs = op.T(y) + rho * anchor
    res = op.T(op(sol)) + rho * sol - rhs
    assert float(res.norm() / rhs.norm()) < 1e-4
    # it is the minimiser: any perturbation raises the prox objective
    def energy(u: torch.Tensor) -> float:
        return float((op(u) - y).pow(2).sum() / (2 * sigma**2) + mu / 2 * (u - anchor).pow(2).sum())
    bump = 1e-2 * torch.randn(sol.shape, generator=gen)
    assert energy(sol) < energy(sol + bump) and energy(sol) < energy(sol - bump)


def test_dense_operator_prox() -> None:
    op = Dense(32)
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(1, 1, 4, N, generator=gen)
    anchor = torch.randn(1, 1, N, N, generator=gen)
    sol = prox_data(op, y, anchor, 0.5, 1.0, tol=1e-7, maxiter=300).double()
    a = op.mat.double()
    exact = torch.linalg.solve(a.T @ a + 0.25 * torch.eye(N * N),
                               a.T @ y.double().flatten() + 0.25 * anchor.double().flatten())
    assert torch.allclose(sol.flatten(), exact, atol=1e-4)


def test_segment_vjp_matches_autograd() -> None:
    prior = _prior(basis=True)
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(3, 1, N, N, generator=gen)
    w = torch.randn(3, 1, N, N, generator=gen)
    t0, t1 = torch.tensor([0.0, 0.25, 0.5]), torch.tensor([0.25, 0.5, 1.0])
    _, states = euler_flow(prior, z, t0, t1, 3, keep_states=True)
    ours = euler_vjp(prior, states, t0, t1, w)
    zg = z.clone().requires_grad_(True)
    u = zg
    for j in range(3):
        tj = t0 + (t1 - t0) * j / 3
        u = u + ((t1 - t0) / 3).view(-1, 1, 1, 1) * prior.velocity(u, tj)
    (ref,) = torch.autograd.grad(u, zg, grad_outputs=w)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_radial_regulariser() -> None:
    z = torch.randn(2, 1, N, N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    zg = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(radial_reg(zg).sum(), zg)
    assert torch.allclose(g, radial_reg_grad(z), atol=1e-10)
    d = N * N  # minimum on the sphere ‖z‖ = √(d−1)
    ring = z / z.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * (d - 1) ** 0.5
    assert float(radial_reg_grad(ring).abs().max()) < 1e-10


def test_reconstruct_api_is_seeded_and_beats_pseudo_inverse() -> None:
    base = _prior()  # a prior whose mean is far from the pseudo-inverse's zeros
    prior = GaussianPrior(base.mean.float() + 1.0, 0.2 * base.var.float())
    x1 = prior.sample_data(1, seed=7).float()
    op = Inpainting(_mask())
    y = op(x1)
    runs = [ctflow.reconstruct(y, op, method="msflow", prior=prior, seed=s, iters=20,
                               init="noise", shooting=4, segment_steps=2, mu=10.0, lam=1.0,
                               eta=1.0) for s in (0, 0, 1)]
    assert torch.equal(runs[0].image, runs[1].image)
    assert not torch.equal(runs[0].image, runs[2].image)
    assert runs[0].nfe > 0 and runs[0].nfe == runs[0].info["history"]["nfe"][-1]
    err = float((runs[0].image - x1).pow(2).mean().sqrt())
    err_pinv = float((op.pinv(y) - x1).pow(2).mean().sqrt())
    assert err < 0.5 * err_pinv


def test_bad_options_raise() -> None:
    prior = _prior()
    op = Identity(N)
    y = torch.zeros(1, 1, N, N)
    with pytest.raises(MethodError):
        msflow(y, op, prior=prior, shooting=0)
    with pytest.raises(MethodError):
        msflow(y, op, prior=prior, init="zeros")
    with pytest.raises(MethodError):
        ctflow.reconstruct(y, op, method="msflow", prior=prior, steps=3)


def test_family_defaults_are_used_and_explicit_options_win() -> None:
    prior = _prior()
    prior.presets = shipped_presets()
    op = Inpainting(_mask())
    y = op(prior.sample_data(1, seed=2).float())
    capped = {"iters": 1}  # keep the test fast; every other option from the table
    for family, expect in ((None, "inpainting"), ("ct", "ct"), ("blur", "blur")):
        out = msflow(y, op, prior=prior, task_family=family, **capped)
        table = {**GENERIC, **preset_options(prior.presets, "msflow", expect, N, mask_kind(op)),
                 **capped}
        used = out.info["options"]
        assert used["task_family"] == expect
        assert used["mu"] == table["mu_noiseless"]  # noiseless call
        for key in ("shooting", "segment_steps", "iters", "lam", "init", "eta", "mu_growth"):
            assert used[key] == table[key], key
        assert out.info["euler_steps"] == table["shooting"] * table["segment_steps"]
    noisy = msflow(y, op, prior=prior, noise_std=0.01, iters=1, shooting=3, mu=7.0)
    assert noisy.info["options"]["shooting"] == 3 and noisy.info["options"]["mu"] == 7.0
    want = {**GENERIC, **preset_options(prior.presets, "msflow", "inpainting", N)}
    assert msflow(y, op, prior=prior, noise_std=0.01, iters=1).info["options"]["mu"] == \
        want["mu_noisy"]
    with pytest.raises(MethodError):
        msflow(y, op, prior=prior, task_family="mri")


@pytest.mark.parametrize("method", ["msflow", "dflow"])
def test_presets_record_their_tuning(method: str) -> None:
    """Every family was tuned on the validation split (docs/tuning/latent.json), and each
    stored option is the winner (best mean PSNR up to the 0.1 dB tie) of the last tuning
    run that searched it: 64² and mask-kind runs in phantom-64's presets, runs at another
    size in that size's prior's."""
    log = json.loads((ROOT / "docs" / "tuning" / "latent.json").read_text())["runs"][method]
    assert set(log) == {"ct", "inpainting", "sr", "blur"}
    # runs at 64² by the prior they tuned: "default" was phantom-64 when those ran
    by_prior: dict[tuple[str, str], list] = {}
    for family, entry in log.items():
        for run in entry["tuning"]:
            prior = "phantom-64" if run["prior"] == "default" else run["prior"]
            by_prior.setdefault((family, prior), []).append(run)
    assert {prior for _, prior in by_prior} <= {"phantom-64", "realct-64"}
    entries = [(f"{family}:{prior}", runs,
                preset_options(shipped_presets(prior), method, family, 64))
               for (family, prior), runs in by_prior.items()]
    entries += [(f"{family}@{size}", runs, preset_options(shipped_presets("phantom-128"),
                                                          method, family, int(size)))
                for family, entry in log.items() for size, runs in entry["sizes"].items()]
    entries += [(f"{family}#{mask}", runs, preset_options(shipped_presets(), method, family,
                                                          64, mask))
                for family, entry in log.items() for mask, runs in entry["masks"].items()]
    for family, runs, options in entries:
        assert runs, family
        if "@" in family:  # tuned at another image size: every run says so
            assert all(f"--size {family.split('@')[1]}" in run["command"] for run in runs)
        if "#" in family:  # tuned for one mask kind: every run says so
            assert all(f"--tune-mask {family.split('#')[1]}" in run["command"] for run in runs)
        for run in runs:
            assert run["split"] == "val" and run["images"] and run["results"]
            assert run["command"].startswith("python3 scripts/bench_msflow.py")
            n_grid = 1
            for values in run["grid"].values():
                n_grid *= len(values)
            assert len(run["results"]) == n_grid
            best = max(r["psnr"] for r in run["results"])
            mu_key = "mu_noisy" if "mu_noisy" in run["chosen"] else "mu_noiseless"
            chosen = [r for r in run["results"]
                      if {mu_key if k == "mu" else k: v for k, v in r["options"].items()}
                      == run["chosen"]]
            assert len(chosen) == 1 and chosen[0]["psnr"] >= best - 0.1 - 1e-9, family
        searched: dict[str, object] = {}
        for run in runs:
            searched.update(run["chosen"])
        assert {k: options[k] for k in searched} == searched, family


def test_cli_passes_the_ct_family(tmp_path, monkeypatch) -> None:
    """``ctflow reconstruct`` gives methods with a task_family option the CT defaults, unless
    --opt sets it."""
    from ctflow.api import Reconstruction
    from ctflow.cli import main

    sino = tmp_path / "sino.h5"
    assert main(["simulate", "--size", "16", "--views", "8", "-o", str(sino)]) == 0
    seen: list[dict] = []

    def fake(y, op, method, prior, nfe, noise_std, seed, **options):
        seen.append({"method": method, **options})
        return Reconstruction(torch.zeros(1, 1, 16, 16), 0, 0.0, method)

    monkeypatch.setattr(ctflow, "reconstruct", fake)
    monkeypatch.setattr(ctflow, "load_prior", lambda name: None)
    for i, extra in enumerate(([], ["--opt", "task_family=blur"])):
        for method in ("msflow", "dflow", "fbp"):
            out = tmp_path / f"{method}{i}.npy"
            assert main(["reconstruct", str(sino), "--method", method, "-o", str(out)]
                        + extra) == 0
    expect = {("msflow", 0): "ct", ("dflow", 0): "ct", ("fbp", 0): None,
              ("msflow", 1): "blur", ("dflow", 1): "blur", ("fbp", 1): "blur"}
    got = {(s["method"], i // 3): s.get("task_family") for i, s in enumerate(seen)}
    assert got == expect


def test_bench_budget_fits_a_third_of_dflow_time() -> None:
    """bench_msflow's msflow-budget cap (ctflow.bench.latent): a third of D-Flow's seconds at
    MS-Flow's measured seconds per NFE, with the 10 % margin."""
    # MS-Flow: 100 NFE in 4 s (0.04 s/NFE); D-Flow: 6 s → a third is 2 s → 50 NFE → 45
    assert budget_nfe({"seconds": 4.0, "nfe": 100.0}, {"seconds": 6.0, "nfe": 200.0}) == 45
    cap = budget_nfe({"seconds": 3.0, "nfe": 76.0}, {"seconds": 6.28, "nfe": 204.0})
    assert cap * 3.0 / 76.0 <= 6.28 / 3


def _toy_presets() -> Presets:
    def rec(options, size=64, mask=None):
        return {"family": "inpainting", "size": size, "mask": mask, "options": options}

    family = {"iters": 20, "eta": 2.0}
    return Presets(prior="toy", methods={"msflow": [
        rec(family), rec({**family, "init": "rollout"}, size=128),
        rec({**family, "init": "conjugate", "eta": 1.0}, mask="scattered")]})


def _box(n: int) -> torch.Tensor:
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[n // 4: 3 * n // 4, n // 4: 3 * n // 4] = False
    return mask


def test_defaults_per_image_size() -> None:
    """Records tuned at another image size serve the images nearest it."""
    prior = _prior()
    prior.presets = _toy_presets()
    generic = {**GENERIC, "init": "noise"}
    got = {n: resolve_options("msflow", generic, prior, task_context(Inpainting(_box(n))))
           for n in (32, 64, 96, 97, 256)}
    assert [g["init"] for g in got.values()] == ["noise", "noise", "noise", "rollout", "rollout"]
    assert [g["tuned_at_size"] for g in got.values()] == [64, 64, 64, 128, 128]
    assert all(g["iters"] == 20 for g in got.values())
    sr = resolve_options("msflow", generic, prior, task_context(SuperResolution(64, 2)))
    assert sr["tuned_at_size"] is None and sr["init"] == "noise"  # no sr records
    given = resolve_options("msflow", generic, prior, task_context(Inpainting(_box(128))),
                            init=None, iters=5)
    assert (given["init"], given["iters"]) == ("rollout", 5)


def test_defaults_per_mask_kind() -> None:
    """Records tuned on scattered masks serve operators with such a mask at any size; box
    masks and other operators keep the family's."""
    box = torch.ones(16, 16, dtype=torch.bool)
    box[4:12, 4:12] = False
    scattered = torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) > 0.7
    kinds = [mask_kind(Inpainting(m)) for m in (box, scattered)]
    assert kinds == [None, "scattered"]
    presets = _toy_presets()
    for size in (64, 128):
        got = [preset_options(presets, "msflow", "inpainting", size, k) for k in kinds]
        assert [(g.get("init", "noise"), g["eta"], g["iters"]) for g in got] == \
            [("noise" if size == 64 else "rollout", 2.0, 20), ("conjugate", 1.0, 20)]
    prior = _prior()
    prior.presets = presets
    op = Inpainting(torch.rand(N, N, generator=torch.Generator().manual_seed(1)) > 0.7)
    assert mask_kind(op) == "scattered"
    y = op(prior.sample_data(1, seed=2).float())
    out = msflow(y, op, prior=prior, noise_std=0.01, task_family="inpainting", iters=1)
    assert out.info["options"]["init"] == "conjugate"
    assert out.info["options"]["presets"] == "toy"
