"""The task context of a call: family from the operator class, mask kind computed in ctflow."""

from __future__ import annotations

import pytest
import torch

from ctflow.errors import MethodError
from ctflow.operators import (
    FanBeam2D,
    GaussianBlur,
    Identity,
    Inpainting,
    ParallelBeam2D,
    SuperResolution,
)
from ctflow.solvers.context import edge_fraction, mask_kind, task_context


def test_inpainting_mask_kind():
    """edge_fraction: share of missing pixels with an observed 4-neighbour."""
    box = torch.ones(8, 8, dtype=torch.bool)
    box[2:6, 2:6] = False  # 16 missing, the 12 on the ring touch data
    assert edge_fraction(box) == 12 / 16 and mask_kind(Inpainting(box)) == "scattered"
    box = torch.ones(16, 16, dtype=torch.bool)
    box[2:14, 2:14] = False  # 144 missing, 44 on the ring
    assert edge_fraction(box) == pytest.approx(44 / 144)
    assert mask_kind(Inpainting(box)) is None
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 == 0
    assert edge_fraction(checker) == 1.0 and mask_kind(Inpainting(checker)) == "scattered"
    assert edge_fraction(torch.ones(4, 4, dtype=torch.bool)) == 1.0
    assert edge_fraction(torch.zeros(4, 4, dtype=torch.bool)) == 0.0


def test_family_is_an_operator_attribute_and_the_context_holds_it():
    ops = {"ct": ParallelBeam2D(image_size=16, views=8), "sr": SuperResolution(16, 2),
           "blur": GaussianBlur(16, 1.0), "inpainting": Inpainting(torch.ones(16, 16) > 0)}
    assert FanBeam2D.family == "ct"
    for family, op in ops.items():
        ctx = task_context(op, None, 0.1)
        assert (ctx.family, ctx.noisy, ctx.size) == (family, True, 16)
    assert task_context(Identity(16)).family is None
    assert task_context(Identity(16), "blur").family == "blur"  # given wins
    assert not task_context(ops["ct"], None, 0.0).noisy
    assert task_context(ops["sr"]).mask is None
    with pytest.raises(MethodError, match="task_family"):
        task_context(ops["sr"], "mri")
