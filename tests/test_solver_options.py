"""The registry's declared options: every method's Options dataclass mirrors its solver's
keyword options, validates on construction, and is what the front-ends read."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import ctflow
from ctflow.bench.config import method_accepts
from ctflow.commands.help_catalog import method_options
from ctflow.errors import MethodError
from ctflow.operators import FILTERS, Inpainting
from ctflow.priors.presets import FAMILIES
from ctflow.solvers import SOLVERS, get_solver, validate_options
from ctflow.solvers import options as opts

COMMON = ("prior", "noise_std", "seed", "progress", "context")


@pytest.mark.parametrize("method", list(SOLVERS))
def test_options_fields_equal_the_solver_keyword_options(method):
    solve, spec = get_solver(method)
    keywords = [(p.name, p.default) for p in inspect.signature(solve).parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.name not in COMMON]
    declared = [(f.name, f.default) for f in dataclasses.fields(spec.options)]
    assert declared == keywords
    assert dataclasses.is_dataclass(spec.options) and spec.options.method == method
    spec.options()  # the defaults themselves validate
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(spec.options(), declared[0][0], None)


@pytest.mark.parametrize("method, name, value", [
    ("conjugate", "tau", 1.0), ("conjugate-diffusion", "tau", 0.0), ("conjugate", "order", 3),
    ("pigfm", "jacobian", "yes"), ("otode", "t0", 0.0), ("msflow", "init", "zeros"),
    ("dflow", "lr", 0.0), ("mbir", "q", 2.5), ("fbp", "filter", "box"), ("tv", "lam", -1.0),
    ("cgls", "iters", 2.5), ("sirt", "nonneg", 1), ("dps", "nfe", 1),
    ("pnpflow", "gamma", float("nan")), ("conjugate", "task_family", "mri"),
    ("pigfm", "photons", 0.0), ("flower", "cg_iters", 0),
])
def test_a_bad_value_is_a_method_error_naming_the_option(method, name, value):
    with pytest.raises(MethodError, match=rf"{method}: option {name} "):
        validate_options(method, {name: value})


def test_good_values_pass_and_unknown_names_are_refused():
    o = validate_options("conjugate", {"nfe": 8, "w": 2.5, "tau": 0.0, "order": 2,
                                        "task_family": "ct", "jacobian": True})
    assert (o.nfe, o.w, o.order) == (8, 2.5, 2) and o.given()["task_family"] == "ct"
    with pytest.raises(MethodError, match="takes no option"):
        validate_options("fbp", {"nfe": 5})


def test_the_api_validates_before_any_work():
    op = Inpainting(torch.ones(8, 8, dtype=torch.bool))
    y = torch.zeros(1, 1, 8, 8)
    with pytest.raises(MethodError, match="option iters must be an integer"):
        ctflow.reconstruct(y, op, method="cgls", iters=2.5)
    with pytest.raises(MethodError, match="takes no option"):
        ctflow.reconstruct(y, op, method="cgls", nfe=3)


def test_front_ends_read_the_registry():
    assert method_accepts("dflow", "history_size") and not method_accepts("fbp", "nfe")
    assert method_options("cgls") == ["iters=30", "tol=1e-08", "discrepancy=1.0"]
    assert "task_family=auto" in method_options("conjugate")


def test_copied_choice_lists_match_their_sources():
    assert opts.FILTERS == tuple(FILTERS)
    assert opts.FAMILIES == tuple(FAMILIES)
    from ctflow.solvers import dflow, msflow

    assert opts.MSFLOW_INITS == msflow.INITS and opts.DFLOW_INITS == dflow.INITS


def test_cli_refuses_a_bad_opt_in_one_line_before_any_output(tmp_path, capsys):
    from ctflow.cli import main

    sino = tmp_path / "s.h5"
    assert main(["simulate", "--size", "64", "--views", "8", "--seed", "1", "-o", str(sino)]) == 0
    capsys.readouterr()
    out = tmp_path / "r.npy"
    for extra, name in ((["--opt", "tau=1.5"], "tau"), (["--nfe", "0"], "nfe"),
                        (["--opt", "bogus=1"], "bogus")):
        code = main(["reconstruct", str(sino), "--method", "conjugate", *extra, "-o", str(out)])
        err = capsys.readouterr().err.strip()
        assert code != 0 and name in err and len(err.splitlines()) == 1 and not out.exists()
    assert main(["reconstruct", str(sino), "--method", "cgls", "--opt", "tol=1e-6",
                 "--opt", "consistency=off", "-o", str(out)]) == 0 and out.exists()
