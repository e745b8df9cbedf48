"""The one tuner of the tuning scripts (ctflow.bench.tune): grid order, scores averaged over
the problems (a failed solve scores −inf), the best by score with the stated tie-break, and
the presets records and tuning log it stores."""

from __future__ import annotations

import json
import math

from ctflow.bench import tune
from ctflow.priors.presets import load_presets, presets_path


def test_grid_points_vary_the_last_key_fastest_over_fixed_options():
    points = tune.grid_points({"w": [1, 2], "tau": [0.2, 0.4]}, {"iters": 5, "w": 0})
    assert points == [{"iters": 5, "w": 1, "tau": 0.2}, {"iters": 5, "w": 1, "tau": 0.4},
                      {"iters": 5, "w": 2, "tau": 0.2}, {"iters": 5, "w": 2, "tau": 0.4}]
    assert tune.grid_points({}) == [{}]


def test_evaluate_averages_over_problems_and_a_failure_scores_minus_infinity():
    seen = []

    def solve(problem: float, options: dict) -> dict | None:
        if options["w"] < 0 and problem > 1:
            return None
        return {"psnr": problem * options["w"], "nfe": 2 * problem}

    trials = tune.evaluate([{"w": 1.0}, {"w": -1.0}], [1.0, 2.0], solve, ("psnr", "nfe"),
                           seen.append)
    assert trials[0].scores == {"psnr": 1.5, "nfe": 3.0}
    assert trials[0].results == [{"psnr": 1.0, "nfe": 2.0}, {"psnr": 2.0, "nfe": 4.0}]
    assert trials[1].scores["psnr"] == -math.inf and math.isnan(trials[1].scores["nfe"])
    assert seen == trials and all(t.wall >= 0 for t in trials)


def test_pick_best_breaks_ties_by_preference_then_grid_order():
    rows = [{"psnr": 30.0, "nfe": 50}, {"psnr": 30.05, "nfe": 40}, {"psnr": 30.08, "nfe": 40},
            {"psnr": 29.0, "nfe": 10}]
    assert tune.pick_best(rows, lambda r: r["psnr"]) is rows[2]  # no tie band: the best
    # within 0.1 dB of 30.08 the cheapest wins, the earlier of the two at 40 NFE
    assert tune.pick_best(rows, lambda r: r["psnr"], 0.1, lambda r: (r["nfe"],)) is rows[1]
    assert tune.pick_best(rows, lambda r: r["psnr"], 0.1) is rows[0]  # no preference: earliest
    equal = [{"psnr": 5.0}, {"psnr": 5.0}]
    assert tune.pick_best(equal, lambda r: r["psnr"]) is equal[0]
    failed = [{"psnr": -math.inf}, {"psnr": -math.inf}]
    assert tune.pick_best(failed, lambda r: r["psnr"]) is failed[0]


def test_store_merges_records_and_rewrites_the_log(tmp_path):
    stem = tmp_path / "toy"
    log = tmp_path / "log.json"
    record = {"family": "ct", "size": 16, "options": {"w": 3.0}}
    seen = []

    def records(presets):
        seen.append(presets)
        return {"pigfm": [record]}

    tune.store(stem, "toy", records, log, lambda old: {**old, "runs": [*old.get("runs", []), 1]})
    tune.store(stem, "toy", lambda old: {"pigfm": [{**record, "options": {"w": 5.0}}]}, log,
               lambda old: {**old, "runs": [*old["runs"], 2]})
    assert seen == [None]  # no presets before the first run
    stored = load_presets(presets_path(stem)).records("pigfm")
    assert [r["options"] for r in stored] == [{"w": 5.0}]  # same selection key: replaced
    assert json.loads(log.read_text(encoding="utf-8")) == {"runs": [1, 2]}


def test_guided_tuning_searches_the_temperature_only_when_asked():
    from ctflow.bench.guided import _grid_names

    assert _grid_names("conjugate", False, {"order": [1]}) == ("conjugate", False,
                                                               ("w", "tau", "lam"))
    assert _grid_names("conjugate", True, {"order": [1], "temperature": [1.0]})[2] == \
        ("w", "tau", "rho_scale", "lam")
    assert _grid_names("pigfm", False, {"order": [1], "temperature": [0.0, 1.0]}) == \
        ("pigfm", False, ("w", "tau", "temperature"))
    assert _grid_names("conjugate", True, {"order": [1, 2], "temperature": [0.0]})[2] == \
        ("w", "tau", "rho_scale", "lam", "order", "temperature")
