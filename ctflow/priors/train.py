"""Conditional flow matching on the OT path, as a library: ``train(config) -> dict``.

Per step, with x1 a batch of training images (model space), z ~ N(0, I), t ~ U(0, 1):

    x_t = t·x1 + (1−t)·z,      L(θ) = E ‖v_θ(x_t, t) − (x1 − z)‖²  (mean over pixels)

optionally with minibatch OT coupling (z permuted to minimise Σ_i ‖x1_i − z_π(i)‖², exact
assignment).  AdamW with linear warm-up then a constant rate, gradient-norm clipping,
EMA weights θ̄ ← β̄θ̄ + (1−β̄)θ with β̄ = min(β, (1+k)/(10+k)), bf16 autocast on GPU.

Reproducible by seed: step k's batch, noise and times come from a generator seeded by
(seed, rank, k), so a resumed run continues exactly as an uninterrupted one.  Multi-GPU
(or multi-process CPU, gloo) through ``torchrun``: each rank draws its own batch,
DistributedDataParallel averages gradients, rank 0 logs and writes checkpoints.

Run folder: ``state.json`` + ``state-STEP.safetensors`` (full training state for ``resume``,
see :mod:`ctflow.priors.train_state`; nothing is pickled), ``ema.safetensors`` +
``ema.json`` (a loadable prior checkpoint of the EMA weights), ``log.csv`` (loss curve),
``pool.npy`` (cached phantom pool).
"""

from __future__ import annotations

import copy
import csv
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import InputError
from .checkpoint import save_checkpoint
from .datasets import load_pool, phantom_pool, random_shift, realct_pool
from .train_config import TrainConfig, check_config, make_config, prior_config, realct_sizes
from .train_state import load_train_state, save_train_state
from .unet import build_unet, count_parameters, unet_config, velocity_net_forward


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The CPU generator of one training step: a function of (seed, rank, step) only."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def ot_pairing(x1: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The permutation π minimising Σ_i ‖x1_i − z_π(i)‖² (exact, Hungarian algorithm)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x1.flatten(1).double(), z.flatten(1).double()).square()
    _, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(cols, dtype=torch.long)


def cfm_batch(pool: torch.Tensor, batch_size: int, gen: torch.Generator, ot: bool = False,
              max_shift: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target) for one step: x_t = t·x1 + (1−t)·z, target = x1 − z."""
    idx = torch.randint(0, pool.shape[0], (batch_size,), generator=gen)
    x1 = random_shift(pool[idx], max_shift, gen)
    z = torch.randn(x1.shape, generator=gen)
    t = torch.rand(batch_size, generator=gen)
    if ot:
        z = z[ot_pairing(x1, z)]
    tt = t.view(-1, 1, 1, 1)
    return tt * x1 + (1 - tt) * z, t, x1 - z


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant."""
    return cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float, step: int) -> None:
    """θ̄ ← β̄θ̄ + (1−β̄)θ, β̄ = min(decay, (1+step)/(10+step)); buffers are copied."""
    beta = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
        pe.lerp_(p.detach(), 1 - beta)
    for be, b in zip(ema.buffers(), net.buffers(), strict=True):
        be.copy_(b)


@torch.no_grad()
def validation_loss(net: torch.nn.Module, val: torch.Tensor, device: torch.device,
                    seed: int = 12345) -> float:
    """Flow-matching loss on a fixed batch: fixed noise, t on a uniform grid in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(val.shape, generator=gen)
    t = (torch.arange(val.shape[0]) + 0.5) / val.shape[0]
    tt = t.view(-1, 1, 1, 1)
    xt, target = tt * val + (1 - tt) * z, val - z
    total = 0.0
    for i in range(0, val.shape[0], 32):
        v = velocity_net_forward(net, xt[i:i + 32].to(device), t[i:i + 32].to(device))
        total += float((v.float().cpu() - target[i:i + 32]).square().sum())
    return total / target.numel()


def _distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda and local_rank >= torch.cuda.device_count():
        raise InputError(
            f"process {local_rank} of this node has no GPU of its own (torch sees "
            f"{torch.cuda.device_count()}): start at most that many processes per node, "
            "or train on the CPU with --device cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cfg.device not in ("auto", "cuda"):
        device = torch.device(cfg.device)
    elif cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


class _StopFlag:
    """Set by SIGTERM/SIGINT so the loop can write a checkpoint and return."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) a flow prior; returns a summary with the loss history.

    Keys: ``run_dir``, ``steps``, ``final_loss`` (mean of the last logged interval),
    ``val_loss``, ``wall_seconds`` (over all resumed sessions), ``history`` (list of
    {step, loss, lr, val_loss, seconds}), ``parameters``, ``checkpoint`` (EMA prior stem).
    """
    cfg = make_config(config)
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = _distributed(cfg)
    run_dir = Path(cfg.out_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    _barrier(world)
    run = _start(cfg, run_dir, device)
    pool, val = _data(cfg, run_dir, rank, world)
    run.model = run.net
    if world > 1:
        run.model = torch.nn.parallel.DistributedDataParallel(
            run.net, device_ids=[device.index] if device.type == "cuda" else None)
    last_loss, last_val, wall = _loop(cfg, run, pool, val, run_dir, rank, world, device)
    if world > 1:
        dist.destroy_process_group()
    return {"run_dir": str(run_dir), "steps": run.step, "final_loss": last_loss,
            "val_loss": last_val, "wall_seconds": wall, "history": run.history,
            "parameters": count_parameters(run.net), "checkpoint": str(run_dir / "ema"),
            "world_size": world}


@dataclass
class _Run:
    """The mutable state of a run: networks, optimiser, step, history, time so far."""

    unet: dict[str, Any]
    net: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    step: int = 0
    wall_before: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    model: torch.nn.Module | None = None


def _start(cfg: TrainConfig, run_dir: Path, device: torch.device) -> _Run:
    """A fresh network (seeded), its EMA copy and optimiser; from ``init_from``'s weights
    when fine-tuning, and from the run folder's state when resuming."""
    unet = unet_config(cfg.image_size, cfg.net)
    torch.manual_seed(cfg.seed)
    net = build_unet(unet).to(device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = _Run(unet, net, ema, opt)
    if cfg.init_from:  # fine-tuning: start from a trained prior's weights (same network)
        from .registry import load_prior

        start_prior = load_prior(cfg.init_from)
        if start_prior.config.get("unet") != unet:
            raise InputError(f"--init {cfg.init_from}: its network differs from --net "
                             f"{cfg.net} at --size {cfg.image_size}")
        net.load_state_dict(start_prior.net.state_dict())
        ema.load_state_dict(start_prior.net.state_dict())
    if cfg.resume:
        state = load_train_state(run_dir, net, ema, opt, unet)
        if state is not None:
            run.step, run.wall_before = state["step"], state["wall_seconds"]
            run.history = state["history"]
    return run


def _data(cfg: TrainConfig, run_dir: Path, rank: int, world: int
          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training pool (every rank) and the validation batch (rank 0)."""
    cache = run_dir / f"pool_{cfg.image_size}_{cfg.pool_size}.npy"
    if rank == 0 or cfg.source != "phantoms":
        pool = load_pool(cfg.source, cfg.image_size, cfg.pool_size, cfg.data_path,
                         progress=cfg.progress and rank == 0, cache=cache,
                         min_crop=cfg.min_crop)
    _barrier(world)
    if rank != 0 and cfg.source == "phantoms":
        pool = load_pool(cfg.source, cfg.image_size, cfg.pool_size, cache=cache)
    val = None
    if cfg.source == "phantoms" and cfg.val_size > 0 and rank == 0:
        val = phantom_pool(cfg.image_size, cfg.val_size, "val")
    if cfg.source == "realct" and cfg.val_size > 0 and rank == 0:  # held-out patients
        val = realct_pool(cfg.image_size, cfg.val_size, "val", cfg.data_path, seed=1,
                          min_crop=cfg.min_crop)
    return pool, val


def _step(cfg: TrainConfig, run: _Run, pool: torch.Tensor, rank: int,
          device: torch.device) -> float:
    """One optimiser step on the batch of (seed, rank, step); returns its loss."""
    gen = step_generator(cfg.seed, rank, run.step)
    xt, t, target = cfm_batch(pool, cfg.batch_size, gen, cfg.ot_coupling, cfg.max_shift)
    xt, t, target = xt.to(device), t.to(device), target.to(device)
    autocast = device.type == "cuda" and cfg.amp
    assert run.model is not None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        v = velocity_net_forward(run.model, xt, t)
    loss = (v.float() - target).square().mean()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.net.parameters(), cfg.grad_clip)
    for group in run.opt.param_groups:
        group["lr"] = learning_rate(cfg, run.step)
    run.opt.step()
    ema_update(run.ema, run.net, cfg.ema_decay, run.step)
    run.step += 1
    return float(loss.detach())


def _loop(cfg: TrainConfig, run: _Run, pool: torch.Tensor, val: torch.Tensor | None,
          run_dir: Path, rank: int, world: int, device: torch.device
          ) -> tuple[float, float | None, float]:
    """Steps until ``cfg.steps``, the deadline or a stop signal, logging every
    ``log_every`` steps and checkpointing every ``ckpt_every``; returns (last loss, last
    validation loss, wall seconds over all sessions)."""
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=run.step, desc=f"train {cfg.name}",
               dynamic_ncols=True, disable=not (cfg.progress and rank == 0))
    start = time.perf_counter()
    deadline = math.inf if cfg.max_minutes is None else start + 60 * cfg.max_minutes
    losses: list[float] = []
    last_loss = run.history[-1]["loss"] if run.history else math.nan
    last_val = run.history[-1].get("val_loss") if run.history else None
    run.net.train()
    with _StopFlag() as flag:
        while run.step < cfg.steps:
            losses.append(_step(cfg, run, pool, rank, device))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            stopping = flag.stop or time.perf_counter() > deadline or run.step == cfg.steps
            if world > 1:  # every rank must take the same decision (collectives follow)
                agree = torch.tensor(float(stopping), device=device)
                dist.all_reduce(agree, op=dist.ReduceOp.MAX)
                stopping = bool(agree > 0)
            if run.step % cfg.log_every == 0 or stopping:
                last_loss = _mean_loss(losses, world, device)
                at_ckpt = run.step % cfg.ckpt_every == 0 or stopping
                last_val = (validation_loss(run.ema, val, device)
                            if val is not None and at_ckpt else None)
                run.history.append({"step": run.step, "loss": last_loss,
                                    "lr": learning_rate(cfg, run.step - 1), "val_loss": last_val,
                                    "seconds": round(run.wall_before + time.perf_counter()
                                                     - start, 1)})
                _append_log(run_dir / "log.csv", run.history[-1], rank)
                losses = []
            if run.step % cfg.ckpt_every == 0 or stopping:
                _save(cfg, run, run_dir, rank, world, device, start, last_loss, last_val)
                _barrier(world)
            if stopping:
                break
    bar.close()
    return last_loss, last_val, run.wall_before + time.perf_counter() - start


def _mean_loss(losses: list[float], world: int, device: torch.device) -> float:
    """The mean training loss of the interval, averaged over ranks."""
    mean = torch.tensor(float(np.mean(losses)), device=device)
    if world > 1:
        dist.all_reduce(mean)
        mean /= world
    return float(mean)


def _save(cfg: TrainConfig, run: _Run, run_dir: Path, rank: int, world: int,
          device: torch.device, start: float, loss: float, val_loss: float | None) -> None:
    """Rank 0: the resumable training state and the EMA prior checkpoint."""
    if rank != 0:
        return
    wall = run.wall_before + time.perf_counter() - start
    save_train_state(run_dir, run.net, run.ema, run.opt,
                     {"step": run.step, "wall_seconds": wall, "history": run.history,
                      "unet": run.unet, "config": asdict(cfg)})
    info = {"steps": run.step, "world_size": world, "wall_seconds": round(wall, 1),
            "final_loss": loss, "val_loss": val_loss, "device": str(device.type)}
    save_checkpoint(run_dir / "ema", run.ema.state_dict(), prior_config(cfg, run.unet, info))


def _append_log(path: Path, row: dict[str, Any], rank: int) -> None:
    if rank != 0:
        return
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


__all__ = ["TrainConfig", "cfm_batch", "ema_update", "learning_rate", "make_config",
           "ot_pairing", "prior_config", "realct_sizes", "step_generator", "train",
           "validation_loss"]
