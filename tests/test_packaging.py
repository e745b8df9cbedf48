"""Shipped priors are package data (ctflow.priors.shipped), found through importlib.resources,
so a wheel (non-editable) install has them; data/examples stays out of the wheel."""

from __future__ import annotations

import fnmatch
import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ctflow.errors import PriorError
from ctflow.priors import registry
from ctflow.priors.checkpoint import save_prior

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ctflow.priors.shipped"  # data/priors of the source tree


def test_registry_resolves_shipped_priors_through_importlib_resources(tmp_path, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    shipped = importlib.resources.files(PACKAGE)
    assert isinstance(shipped, Path) and (shipped / "registry.json").is_file()
    assert registry.priors_dir() == shipped
    assert registry.resolve("default").parent == shipped
    # the folder is whatever importlib.resources says the package holds
    from ctflow.priors.flow import FlowPrior
    from ctflow.priors.unet import unet_config

    save_prior(FlowPrior.from_config({"name": "toy", "image_size": 16,
                                      "unet": unet_config(16, "tiny"), "normalisation": {}}),
               tmp_path / "toy-16")
    (tmp_path / "registry.json").write_text(json.dumps({"aliases": {"default": "toy-16"}}))
    real_files = importlib.resources.files

    def files(package):
        return tmp_path if package == PACKAGE else real_files(package)

    monkeypatch.setattr(importlib.resources, "files", files)
    assert registry.priors_dir() == tmp_path
    assert registry.list_priors() == ["default", "toy-16"]
    assert registry.load_prior("default").image_size == 16
    other = tmp_path / "env"
    other.mkdir()
    monkeypatch.setenv(registry.ENV_VAR, str(other))  # the environment variable still wins
    assert registry.priors_dir() == other

    def missing(package):
        raise ModuleNotFoundError(f"No module named {package!r}")

    monkeypatch.delenv(registry.ENV_VAR)
    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(PriorError, match="package ctflow.priors.shipped.*not installed"):
        registry.load_prior("default")


def test_package_data_covers_the_priors_and_not_the_examples():
    tomllib = pytest.importorskip("tomllib")
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a source tree")
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"][PACKAGE] == "data/priors"
    assert PACKAGE in tool["packages"]
    globs = tool["package-data"][PACKAGE]
    wanted = [p.name for p in (ROOT / "data" / "priors").iterdir()
              if p.suffix in (".json", ".safetensors")]
    assert "registry.json" in wanted and any(n.endswith(".safetensors") for n in wanted)
    for name in wanted + ["phantom-64.presets.json"]:  # presets files beside the weights too
        assert any(fnmatch.fnmatch(name, g) for g in globs), name
    assert not any("examples" in d for d in tool["package-dir"].values())


@pytest.mark.slow
def test_wheel_install_finds_the_shipped_priors(tmp_path):
    """Build a wheel from a copy of the source tree, install it into a private folder and
    use it from outside the source tree: the default prior loads, the CLI reconstructs."""
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a source tree")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "runs", "build", "dist", "bench_results", "docs", "__pycache__", "*.egg-info",
        ".pytest_cache", ".ruff_cache", ".hypothesis", "*.tmp"))
    env = {k: v for k, v in os.environ.items() if k != registry.ENV_VAR}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-build-isolation", "--no-deps", str(src), "-w",
                          str(tmp_path / "whl")], check=True, env=env, cwd=tmp_path,
                   timeout=600)
    wheel = next((tmp_path / "whl").glob("ctflow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ctflow/priors/shipped/registry.json" in names
    assert "ctflow/priors/shipped/phantom-64.safetensors" in names
    assert not any("examples" in n or n.endswith(".h5") for n in names)
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, env=env, cwd=tmp_path, timeout=600)
    env["PYTHONPATH"] = str(site)
    code = ("import ctflow, ctflow.priors.registry as r; print(ctflow.__file__); "
            "print(r.priors_dir()); print(ctflow.load_prior('default').image_size)")
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300).stdout.split()
    assert out[0].startswith(str(site)) and out[1] == str(site / "ctflow/priors/shipped")
    assert out[2] == "64"
    png = tmp_path / "x.png"
    proc = subprocess.run([str(site / "bin" / "ctflow"), "reconstruct",
                           str(ROOT / "data/examples/chest64_60v.h5"), "--method", "fbp",
                           "-o", str(png)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
