"""A new user's first run: the README's tour and CLI examples work as written, the CLI
explains itself (every option described, priors and method options listed, errors that
name the fix), and the tests write nothing under the user's home folder."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ctflow.cli import COMMANDS, build_parser, main
from ctflow.phantoms import phantom

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_block(heading: str, language: str) -> str:
    """The first ```language block after the line ``heading`` in README.md."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no ```{language} block after {heading!r}"
    return match.group(1)


def command_parser(name: str) -> argparse.ArgumentParser:
    """The full subparser of ``ctflow NAME``."""
    try:
        parser = build_parser(name)
    except TypeError:  # a build_parser() that builds every command
        parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# -- the tests themselves keep out of $HOME ---------------------------------------------------


def test_cli_run_writes_nothing_under_home(tmp_path):
    """With HOME an empty folder, simulate + reconstruct + info (which build and cache a
    system matrix) leave it empty: the session's caches live in its temporary folder."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    commands = [["simulate", "--phantom", "chest", "--size", "16", "--views", "8",
                 "-o", "s.h5"],
                ["reconstruct", "s.h5", "--method", "fbp", "-o", "r.npy"],
                ["info", "r.npy"]]
    for words in commands:
        done = subprocess.run([sys.executable, "-m", "ctflow.cli", *words], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []


# -- README: the Python tour ----------------------------------------------------------------


def test_readme_tour_gets_30_db():
    """The tour's code, run as written (64² chest phantom, 1e5 photons), reconstructs the
    phantom to ≥ 30 dB (it got 14 dB while it did not pass the noise std)."""
    from ctflow.metrics import psnr
    from ctflow.units import mu_to_hu

    code = readme_block("### Python", "python")
    namespace: dict = {}
    exec(compile(code, "README.md tour", "exec"), namespace)  # noqa: S102 (our own README)
    res = namespace["res"]
    gt = phantom("chest", 64, seed=1)
    image = mu_to_hu(res.image.detach().double().numpy()[0, 0])
    assert psnr(image, gt) >= 30.0
    assert not res.info.get("warnings")


def test_flow_method_estimates_the_noise_of_ct_data_given_without_noise_std():
    """conjugate with noise_std=None: σ estimated from the data (said in info) and the image
    as good as with the true σ (within 1 dB); noise-free data read as noiseless."""
    import ctflow
    from ctflow.metrics import psnr
    from ctflow.operators import ParallelBeam2D
    from ctflow.simulate import noise_std
    from ctflow.units import hu_to_mu, mu_to_hu

    op = ParallelBeam2D(image_size=64, views=60)
    gt = phantom("chest", 64, seed=1)
    x = torch.from_numpy(hu_to_mu(gt))[None, None]
    noisy = ctflow.simulate(x, op, photons=1e5, seed=0)
    sigma = noise_std(op(x), photons=1e5)
    guessed = ctflow.reconstruct(noisy, op, method="conjugate", nfe=5, seed=0)
    assert guessed.info["noise_std_estimated"] == pytest.approx(sigma, rel=0.2)
    assert "estimated from the data" in guessed.info["notes"][0]
    told = ctflow.reconstruct(noisy, op, method="conjugate", nfe=5, noise_std=sigma, seed=0)
    assert "noise_std_estimated" not in told.info

    def score(res):
        return psnr(mu_to_hu(res.image.double().numpy()[0, 0]), gt)

    assert score(guessed) >= score(told) - 1.0 and score(guessed) > 30
    clean = ctflow.reconstruct(op(x), op, method="conjugate", nfe=5, seed=0)
    assert clean.info["noise_std_estimated"] == 0.0


# -- README: the CLI examples ---------------------------------------------------------------


def readme_cli_examples() -> list[list[str]]:
    lines = readme_block("### Command line", "bash").splitlines()
    return [shlex.split(line.split("#")[0]) for line in lines if line.startswith("ctflow ")]


def bench_pairs_are_valid(words: list[str]) -> None:
    """Every task and method of a bench command exists; fbp only on CT tasks (it refuses
    the others)."""
    from ctflow.bench.tasks import TASKS
    from ctflow.solvers import SOLVERS

    args = command_parser("bench").parse_args(words)
    tasks = args.tasks.split(",") if args.tasks else []
    methods = args.methods.split(",")
    assert set(tasks) <= set(TASKS) and set(methods) <= set(SOLVERS)
    if "fbp" in methods:
        refused = [t for t in tasks if TASKS[t].family != "ct"]
        assert not refused, f"fbp is refused on {refused}: {shlex.join(words)}"




def test_bench_help_example_is_valid():
    epilog = command_parser("bench").epilog
    lines = [line.strip().rstrip("\\") for line in epilog.splitlines()]
    starts = [i for i, line in enumerate(lines) if line.startswith("ctflow bench --tasks")]
    assert starts
    for i in starts:
        words = shlex.split(lines[i] + " " + lines[i + 1])
        bench_pairs_are_valid(words[2:])


def test_readme_cli_examples_parse_are_valid_and_run(tmp_path, monkeypatch, capsys):
    """Every line of the README's CLI block parses and asks for nothing a method refuses;
    its phantom simulate, info and reconstruct lines run as written in a fresh folder."""
    examples = readme_cli_examples()
    assert {words[1] for words in examples} == set(COMMANDS)
    for words in examples:
        command_parser(words[1]).parse_args(words[2:])  # exits (fails) on a usage error
        if words[1] == "bench":
            bench_pairs_are_valid(words[2:])

    monkeypatch.chdir(tmp_path)
    wanted = {"simulate": "--phantom", "info": "sino.h5", "reconstruct": "recon.h5"}
    ran = []
    for words in examples:
        key = wanted.get(words[1])
        if key is None or key not in words:
            continue
        code, out, err = run_cli(words[1:], capsys)
        assert code == 0, err
        ran.append(words[1])
    assert ran == ["simulate", "info", "reconstruct"]
    code, out, err = run_cli(["info", "recon.h5"], capsys)
    assert code == 0 and "ctflow reconstruction" in out


# -- CLI: defaults, errors that name the fix, outputs ---------------------------------------


def test_simulate_default_size_is_the_default_priors(tmp_path, capsys):
    import ctflow
    from ctflow.io.hdf5 import read_sinogram

    code, _, err = run_cli(["simulate", "--views", "8", "-o", str(tmp_path / "s.h5")], capsys)
    assert code == 0, err
    size = read_sinogram(str(tmp_path / "s.h5")).geometry.image_size
    assert size == ctflow.load_prior("default").image_size == 64


def test_prior_size_mismatch_names_the_fix(tmp_path, capsys):
    sino, out = tmp_path / "s100.h5", tmp_path / "r.npy"
    code, _, err = run_cli(["simulate", "--size", "100", "--views", "8", "-o", str(sino)],
                           capsys)
    assert code == 0, err
    code, _, err = run_cli(["reconstruct", str(sino), "--method", "conjugate", "-o",
                            str(out)], capsys)
    assert code == 2 and not out.exists()
    assert len(err.strip().splitlines()) == 1
    assert "multiples of 8" in err and "--size 64" in err and str(sino) in err


def test_default_prior_serves_128(tmp_path, capsys):
    """The real-anatomy default prior is size-agnostic: 128² data reconstruct with it."""
    sino, out = tmp_path / "s128.h5", tmp_path / "r.npy"
    code, _, err = run_cli(["simulate", "--size", "128", "--views", "8", "-o", str(sino)],
                           capsys)
    assert code == 0, err
    code, _, err = run_cli(["reconstruct", str(sino), "--method", "conjugate", "-o",
                            str(out)], capsys)
    assert code == 0, err
    image = np.load(out)
    assert image.shape[-2:] == (128, 128) and np.isfinite(image).all()


@pytest.mark.parametrize("name", ["x.png", "x.npy", "x"])
def test_simulate_refuses_non_hdf5_output_before_any_work(tmp_path, capsys, monkeypatch,
                                                          name):
    import ctflow.commands.simulate as simulate_command

    def no_work(*args, **kwargs):
        raise AssertionError("simulate did work before checking its output name")

    monkeypatch.setattr(simulate_command, "_from_phantom", no_work)
    out = tmp_path / name
    code, _, err = run_cli(["simulate", "--size", "16", "--views", "8", "-o", str(out)],
                           capsys)
    assert code == 2 and not out.exists()
    assert ".h5" in err and str(out) in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags", [
    ["--source", "dicom"],
    ["--source", "hdf5", "--data", "missing.h5"],
    ["--data", "scans"],  # --data with the phantom source
    ["--net", "bogus"],
    ["--size", "36"],  # not divisible by the network's 2**levels
    ["--log-every", "0"],
    ["--ckpt-every", "0"],
    ["--warmup", "-1"],
    ["--max-shift", "-2"],
    ["--threads", "0"],
    ["--device", "tpu9"],
    ["--source", "dicom", "--data", "EMPTY"],  # fails while reading: cleaned up after
])
def test_train_bad_input_creates_no_run_folder(tmp_path, capsys, flags):
    (tmp_path / "empty").mkdir()
    flags = [str(tmp_path / "empty") if f == "EMPTY" else f for f in flags]
    runs = tmp_path / "runs"
    code, _, err = run_cli(["train", "--out", str(runs / "new"), "--steps", "1", "--pool",
                            "4", "--val-size", "2", "--no-progress", *flags], capsys)
    assert code == 2, err
    assert not runs.exists()


class Unpickled:
    """Marks whether an object array was unpickled (it must never be)."""

    seen = False

    def __setstate__(self, state):
        Unpickled.seen = True


def test_info_describes_npy(tmp_path, capsys):
    hu = np.linspace(-1000.0, 1500.0, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    np.save(tmp_path / "r.npy", hu)
    code, out, err = run_cli(["info", str(tmp_path / "r.npy")], capsys)
    assert code == 0, err
    assert "(2, 8, 8) float32 (slices, H, W)" in out and "[-1000, 1500] HU" in out

    np.save(tmp_path / "o.npy", np.array([Unpickled()], dtype=object), allow_pickle=True)
    code, out, err = run_cli(["info", str(tmp_path / "o.npy")], capsys)
    assert code == 2 and "o.npy" in err and not Unpickled.seen


def test_reconstruct_writes_npy_that_info_reads(tmp_path, capsys):
    sino, rec = tmp_path / "s.h5", tmp_path / "r.npy"
    assert run_cli(["simulate", "--size", "16", "--views", "8", "-o", str(sino)], capsys)[0] == 0
    assert run_cli(["reconstruct", str(sino), "--method", "fbp", "-o", str(rec)], capsys)[0] == 0
    code, out, err = run_cli(["info", str(rec)], capsys)
    assert code == 0, err
    lo, hi = (float(v) for v in re.search(r"\[(\S+), (\S+)\] HU", out).groups())
    hu = np.load(rec)
    assert "(1, 16, 16) float32" in out
    assert lo == pytest.approx(float(hu.min()), rel=1e-3, abs=0.5)
    assert hi == pytest.approx(float(hu.max()), rel=1e-3, abs=0.5)


# -- CLI: help ------------------------------------------------------------------------------


def test_every_option_of_every_command_is_described():
    undescribed = []
    for name in COMMANDS:
        for action in command_parser(name)._actions:
            text = re.sub(r"\(default:[^)]*\)", "", action.help or "")
            if action.help == argparse.SUPPRESS or not re.search(r"[A-Za-z]", text):
                undescribed.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert undescribed == []


def test_reconstruct_help_lists_priors_and_method_options(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["reconstruct", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    registry = json.loads((ROOT / "data" / "priors" / "registry.json").read_text())
    for alias, target in registry["aliases"].items():
        assert f"{alias} (= {target})" in out
    for config in (ROOT / "data" / "priors").glob("phantom-*.json"):
        if config.with_suffix(".safetensors").is_file():
            size = json.loads(config.read_text())["image_size"]
            assert re.search(rf"{config.stem}\s+{size}² images", out)
    for expected in ("nfe=5", "w=auto", "tau=auto", "shooting=auto", "segment_steps=auto",
                     "filter='ram-lak'", "iters=300"):
        assert expected in out
