"""FlowPrior: algebraic identities, NFE counting, checkpoints, registry, shipped priors."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

import ctflow
from ctflow.errors import PriorError
from ctflow.priors.checkpoint import load_checkpoint, read_config, save_checkpoint, save_prior
from ctflow.priors.flow import FlowPrior
from ctflow.priors.registry import ENV_VAR, list_priors, load_prior, priors_dir
from ctflow.priors.unet import build_unet, count_parameters, unet_config
from ctflow.units import MU_WATER_PER_MM, hu_to_mu

SIZE = 16


def file_sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_prior(seed: int = 0, dtype: torch.dtype = torch.float32) -> FlowPrior:
    torch.manual_seed(seed)
    config = {"name": "toy", "image_size": SIZE, "unet": unet_config(SIZE, "tiny"),
              "normalisation": {"scale": 1 / MU_WATER_PER_MM, "offset": -1.0,
                                "mu_water": MU_WATER_PER_MM}}
    prior = FlowPrior.from_config(config)
    for p in prior.net.parameters():  # make the untrained net non-trivial in x and t
        p.add_(0.05 * torch.randn_like(p))
    prior.net.to(dtype)
    return prior


def batch(n: int = 3, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed),
                       dtype=dtype)


def test_normalisation_is_hu_over_1000():
    prior = tiny_prior()
    hu = torch.tensor([-1000.0, 0.0, 1000.0])
    assert torch.allclose(prior.to_model(hu_to_mu(hu)), hu / 1000, atol=1e-6)
    mu = hu_to_mu(hu)
    assert torch.allclose(prior.to_physical(prior.to_model(mu)), mu, rtol=1e-6)


def test_x1_eps_vp_identities_on_a_batch():
    prior = tiny_prior(dtype=torch.float64)
    x = batch(dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    tt = t.view(-1, 1, 1, 1)
    v = prior.velocity(x, t)
    x1, eps = prior.x1_hat(x, t), prior.eps_hat(x, t)
    assert torch.allclose(x1, x + (1 - tt) * v, atol=1e-12)
    assert torch.allclose(eps, x - tt * v, atol=1e-12)
    assert torch.allclose(tt * x1 + (1 - tt) * eps, x, atol=1e-12)  # x = t·x̂1 + (1−t)·ε̂
    assert torch.allclose(x1 - eps, v, atol=1e-12)  # v = x̂1 − ε̂
    # VP view: at α with t = α/(α+σ), x_vp = x/√(t²+(1−t)²) and ε_vp = ε̂ at that flow state;
    # then α·x̂1 + σ·ε̂ reproduces x_vp exactly.
    for alpha in (0.3, 0.7, 0.95):
        sigma = math.sqrt(1 - alpha**2)
        tv = prior.vp_time(alpha)
        assert tv / (1 - tv) == pytest.approx(alpha / sigma, rel=1e-12)
        x_vp = x / math.sqrt(tv**2 + (1 - tv) ** 2)
        eps_vp = prior.vp_eps(x_vp, alpha)
        assert torch.allclose(eps_vp, prior.eps_hat(x, tv), atol=1e-12)
        x1_vp = prior.x1_hat(x, tv)
        assert torch.allclose(alpha * x1_vp + sigma * eps_vp, x_vp, atol=1e-10)


def test_nfe_counter_counts_every_evaluation():
    prior = tiny_prior()
    x = batch()
    assert prior.nfe == 0
    prior.velocity(x, 0.3)
    prior.x1_hat(x, 0.3)
    prior.eps_hat(x, 0.3)
    prior.vp_eps(x, 0.5)
    assert prior.nfe == 4
    prior.velocity_vjp(x, 0.3, torch.ones_like(x))
    assert prior.nfe == 6
    prior.sample(2, nfe=5, seed=0)
    assert prior.nfe == 11
    prior.reset_nfe()
    assert prior.nfe == 0


def test_vjp_matches_finite_differences():
    prior = tiny_prior(dtype=torch.float64)
    x, c, d = batch(1, 1, torch.float64), batch(1, 2, torch.float64), batch(1, 3, torch.float64)
    v, g = prior.velocity_vjp(x, 0.4, c)
    assert torch.equal(v, prior.velocity(x, 0.4))
    h = 1e-5
    fd = (prior.velocity(x + h * d, 0.4) - prior.velocity(x - h * d, 0.4)) / (2 * h)
    assert float((g * d).sum()) == pytest.approx(float((fd * c).sum()), rel=1e-6)


def test_sampling_is_seeded_and_prior_has_no_trainable_weights():
    prior = tiny_prior()
    a, b = prior.sample(2, nfe=3, seed=7), prior.sample(2, nfe=3, seed=7)
    assert torch.equal(a, b) and a.shape == (2, 1, SIZE, SIZE)
    assert not torch.equal(a, prior.sample(2, nfe=3, seed=8))
    assert not any(p.requires_grad for p in prior.net.parameters())


def test_save_load_round_trip_is_bitwise(tmp_path):
    prior = tiny_prior()
    weights, config = save_prior(prior, tmp_path / "toy")
    back = load_checkpoint(tmp_path / "toy.safetensors")
    x = batch()
    with torch.no_grad():
        assert torch.equal(back.velocity(x, 0.37), prior.velocity(x, 0.37))
    for k, v in prior.net.state_dict().items():
        assert torch.equal(back.net.state_dict()[k], v)
    cfg = json.loads(config.read_text())
    assert cfg["format"] == "ctflow-prior" and len(cfg["weights_sha256"]) == 64
    assert back.scale == prior.scale and back.offset == -1.0 and back.image_size == SIZE
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_corrupt_or_missing_checkpoints_raise_prior_error(tmp_path):
    prior = tiny_prior()
    weights, config = save_prior(prior, tmp_path / "a")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(PriorError, match="corrupt"):
        load_checkpoint(tmp_path / "a")
    cfg = json.loads(config.read_text())
    cfg["weights_sha256"] = file_sha256(weights)  # consistent, but the file is truncated
    config.write_text(json.dumps(cfg))
    with pytest.raises(PriorError, match="unreadable safetensors"):
        load_checkpoint(tmp_path / "a")
    config.write_text("{not json")
    with pytest.raises(PriorError, match="not a valid JSON"):
        read_config(tmp_path / "a")
    with pytest.raises(PriorError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    # weights of another architecture
    other = {"name": "x", "image_size": SIZE, "unet": unet_config(SIZE, "small"),
             "normalisation": {}}
    save_checkpoint(tmp_path / "b", prior.net.state_dict(), other)
    with pytest.raises(PriorError, match="do not match"):
        load_checkpoint(tmp_path / "b")
    # NaN weights
    state = {k: v.clone() for k, v in prior.net.state_dict().items()}
    next(iter(state.values())).fill_(float("nan"))
    save_checkpoint(tmp_path / "c", state, prior.config)
    with pytest.raises(PriorError, match="NaN"):
        load_checkpoint(tmp_path / "c")


def test_registry_names_aliases_paths_and_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert priors_dir() == tmp_path
    save_prior(tiny_prior(), tmp_path / "toy-16")
    (tmp_path / "registry.json").write_text(json.dumps({"aliases": {"default": "toy-16"}}))
    assert list_priors() == ["default", "toy-16"]
    x = batch()
    ref = load_prior("toy-16").velocity(x, 0.5)
    assert torch.equal(load_prior().velocity(x, 0.5), ref)
    assert torch.equal(ctflow.load_prior("default").velocity(x, 0.5), ref)
    assert torch.equal(load_prior(str(tmp_path / "toy-16.json")).velocity(x, 0.5), ref)
    with pytest.raises(PriorError, match="unknown prior 'nope'.*default, toy-16"):
        load_prior("nope")
    with pytest.raises(PriorError, match="no prior checkpoint"):
        load_prior(str(tmp_path / "nowhere" / "x.json"))
    (tmp_path / "registry.json").write_text("[1, 2")
    with pytest.raises(PriorError, match="registry"):
        load_prior("default")


def test_checksum_is_required_for_shipped_and_path_priors(tmp_path, monkeypatch):
    """A prior found by name (the registry) or by path without weights_sha256, or with a
    wrong one, is refused before its weights are read."""
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    weights, config = save_prior(tiny_prior(), tmp_path / "toy-16")
    (tmp_path / "registry.json").write_text(json.dumps({"aliases": {"default": "toy-16"}}))
    cfg = json.loads(config.read_text())
    assert cfg["weights_sha256"] == file_sha256(weights)
    load_prior("default")
    for bad in (None, "", "abc", 12, "g" * 64):
        changed = {k: v for k, v in cfg.items() if k != "weights_sha256"}
        if bad is not None:
            changed["weights_sha256"] = bad
        config.write_text(json.dumps(changed))
        for name in ("default", "toy-16", str(config)):
            with pytest.raises(PriorError, match=r"toy-16\.json: prior config has no valid "
                                                 r"weights_sha256 \(the SHA-256 of "
                                                 r"toy-16\.safetensors\)"):
                load_prior(name)
    config.write_text(json.dumps({**cfg, "weights_sha256": "0" * 64}))
    with pytest.raises(PriorError, match=r"toy-16\.safetensors: weights are corrupt"):
        load_prior("default")
    config.write_text(json.dumps({**cfg, "weights_sha256": cfg["weights_sha256"].upper()}))
    assert load_prior("toy-16").image_size == SIZE


def test_network_configs_and_bad_config():
    cfg = unet_config(64, "small")
    assert cfg["sample_size"] == 64 and cfg["in_channels"] == cfg["out_channels"] == 1
    assert count_parameters(build_unet(cfg)) <= 4_500_000
    assert count_parameters(build_unet(unet_config(128, "small128"))) <= 4_500_000
    with pytest.raises(PriorError, match="unknown network size"):
        unet_config(64, "huge")
    with pytest.raises(PriorError, match="not divisible"):
        unet_config(36, "small")
    with pytest.raises(PriorError, match="in_channels"):
        build_unet({**cfg, "in_channels": 3})


def test_shipped_default_prior_loads_and_denoises():
    """The shipped default prior: ≤ 20 MB, a training record, and a real denoiser."""
    from ctflow.priors.datasets import phantom_pool

    prior = load_prior("default")
    weights = priors_dir() / f"{prior.config['name']}.safetensors"
    for name in list_priors():  # every shipped prior records its weights' checksum
        if (priors_dir() / f"{name}.json").is_file():
            cfg = json.loads((priors_dir() / f"{name}.json").read_text())
            assert cfg["weights_sha256"] == file_sha256(priors_dir() / f"{name}.safetensors")
    assert weights.stat().st_size <= 20e6
    training = prior.config["training"]
    assert training["steps"] > 0 and "train" in training["command"]
    s = prior.image_size
    if training["data"]["source"] == "realct":  # the training patients vs held-out patients
        from ctflow.priors.datasets import realct_pool
        from ctflow.realct import POOL_FILE, realct_dir

        if not (realct_dir() / POOL_FILE).is_file():
            pytest.skip("the real-CT pool (shared/data/realct) is not here")

        train, test = realct_pool(s, 200, "train", seed=5), realct_pool(s, 8, "val", seed=6)
    else:
        train, test = phantom_pool(s, 200, "train"), phantom_pool(s, 8, "test")
    m, s2 = train.mean(0), train.var(0).clamp_min(1e-8)
    z = torch.randn(test.shape, generator=torch.Generator().manual_seed(0))
    xt = 0.5 * test + 0.5 * z
    with torch.no_grad():
        mse_prior = float((prior.x1_hat(xt, 0.5) - test).square().mean())
    lin = m + 0.5 * s2 / (0.25 * s2 + 0.25) * (xt - 0.5 * m)
    mse_lin = float((lin - test).square().mean())
    assert mse_prior < mse_lin / 2


def test_image_sizes_from_config():
    from ctflow.errors import PriorError
    from ctflow.priors.sizes import ImageSizes

    fixed = ImageSizes.from_config({"image_size": 64})
    assert fixed.supports(64) and not fixed.supports(128)
    free = ImageSizes.from_config({"image_size": 64,
                                   "sizes": {"min": 64, "max": 512, "multiple_of": 8}})
    assert [free.supports(n) for n in (64, 128, 256, 512, 100, 56, 520)] == \
        [True, True, True, True, False, False, False]
    assert [free.nearest(n) for n in (100, 600, 40, 128)] == [96, 512, 64, 128]
    assert fixed.nearest(100) == 64
    for bad in ({"min": 128, "max": 512, "multiple_of": 8},   # excludes image_size
                {"min": 64, "max": 500, "multiple_of": 8},    # max not a multiple
                {"min": 64, "max": 512},                      # missing key
                {"min": 64, "max": 512, "multiple_of": True},
                [64, 512]):
        with pytest.raises(PriorError, match="sizes"):
            ImageSizes.from_config({"image_size": 64, "sizes": bad}, "x.json")


def test_default_prior_is_size_agnostic():
    """The shipped real-anatomy prior serves 64²–512² with one network; its velocity at
    128² is finite and it samples at a size other than the trained one."""
    prior = ctflow.load_prior("default")
    assert prior.image_size == 64 and prior.supports_size(128) and prior.supports_size(512)
    assert not ctflow.load_prior("phantom-64").supports_size(128)
    x = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    v = prior.velocity(x, 0.5)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert prior.sample(1, nfe=2, seed=0, size=96).shape == (1, 1, 96, 96)
