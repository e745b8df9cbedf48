"""Fan-beam geometry and FBP scaling against a real scanner: the HTC2022 measured sinogram
reconstructed from its stated geometry matches the organisers' FBP (ctflow.bench.htc2022, the
logic of scripts/check_htc2022.py)."""

from __future__ import annotations

import pytest
import torch

from ctflow.bench import htc2022 as check
from ctflow.realct import realct_dir

pytestmark = pytest.mark.skipif(not (realct_dir() / "htc2022_ta.h5").is_file(),
                                reason="the HTC2022 file (shared/data/realct) is not here")


def test_real_fan_beam_fbp_matches_the_reference():
    torch.set_num_threads(1)
    data = check.load(realct_dir())
    image, _ = check.reconstruct(data, 1, "fbp")
    got = check.compare(image, data["reference"])
    assert got["corr"] > 0.9999  # 0.99998 measured
    assert got["ratio"] == pytest.approx(1.0, abs=0.01)  # μ in 1/mm × pixel = reference
