"""Procedural phantoms: determinism, HU of each tissue, anatomy placement, sizes, dataset."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ctflow.errors import InputError
from ctflow.phantoms import (
    KINDS,
    LABELS,
    SPLIT_SEEDS,
    PhantomDataset,
    kind_for_seed,
    phantom,
    phantom_labels,
    random_phantom,
)

SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(HU, labels) at 128² for each kind and a few seeds (rendered once)."""
    return {k: [phantom_labels(k, 128, s) for s in SEEDS] for k in KINDS}


def _median(items, *names: str) -> list[float]:
    ids = [LABELS[n] for n in names]
    return [float(np.median(hu[np.isin(lab, ids)])) for hu, lab in items]


def _centroid(lab: np.ndarray, name: str) -> tuple[float, float]:
    ys, xs = np.nonzero(lab == LABELS[name])
    return float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_by_seed_and_seeds_differ(kind: str) -> None:
    a, b = phantom(kind, 64, 11), phantom(kind, 64, 11)
    assert a.dtype == np.float32 and a.shape == (64, 64)
    assert np.array_equal(a, b)
    c = phantom(kind, 64, 12)
    assert np.abs(a - c).mean() > 5.0


@pytest.mark.parametrize(("kind", "size"), [("chest", 32), ("abdomen", 48), ("head", 100),
                                            ("chest", 256)])
def test_any_size_works(kind: str, size: int) -> None:
    img = phantom(kind, size, 3)
    assert img.shape == (size, size) and img.dtype == np.float32
    assert np.all(np.isfinite(img))
    assert img.min() == -1000.0 and img.max() > 700.0


def test_consistent_across_sizes() -> None:
    """Same seed → same anatomy: area-downsampled renders agree with small renders."""
    for kind in KINDS:
        big = phantom(kind, 128, 5).reshape(64, 2, 64, 2).mean(axis=(1, 3))
        small = phantom(kind, 64, 5)
        assert np.abs(big - small).mean() < 1.0  # both sample the same sub-pixel grid
        huge = phantom(kind, 256, 5).reshape(64, 4, 64, 4).mean(axis=(1, 3))
        diff = np.abs(huge - small)
        assert diff.mean() < 10.0 and np.median(diff) < 1.0  # measured 2.5–6 HU, median 0
        other = phantom(kind, 64, 6)
        assert np.abs(other - small).mean() > 3 * diff.mean()


def test_outside_body_is_air() -> None:
    for seed in range(24):
        for kind in KINDS:
            hu, lab = phantom_labels(kind, 32, seed)
            border = np.concatenate([hu[0], hu[-1], hu[:, 0], hu[:, -1]])
            assert np.all(border == -1000.0), (kind, seed)
            bg = lab == LABELS["background"]
            deep = bg.copy()  # background whose 3×3 neighbourhood is background too
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    deep &= np.roll(np.roll(bg, dy, 0), dx, 1)
            assert np.all(hu[deep] == -1000.0)
            width = np.nonzero((lab != 0).any(axis=0))[0]
            assert 0.6 <= (width[-1] - width[0] + 1) / 32 <= 0.95


def test_body_tissue_hu(rendered) -> None:
    for kind in ("chest", "abdomen"):
        assert all(-125 <= m <= -60 for m in _median(rendered[kind], "fat"))
        assert all(35 <= m <= 60 for m in _median(rendered[kind], "muscle"))
        for hu, lab in rendered[kind]:
            cortical = hu[lab == LABELS["cortical_bone"]]
            assert (cortical > 700).sum() >= 5
            assert 150 <= np.median(hu[lab == LABELS["marrow"]]) <= 420  # + partial volume
    assert all(m < -700 for m in _median(rendered["chest"], "lung"))
    assert all(25 <= m <= 55 for m in _median(rendered["chest"], "blood"))
    assert all(45 <= m <= 75 for m in _median(rendered["abdomen"], "liver"))
    assert all(20 <= m <= 50 for m in _median(rendered["abdomen"], "kidney"))


def test_head_tissue_hu(rendered) -> None:
    for hu, lab in rendered["head"]:
        assert (hu[lab == LABELS["cortical_bone"]] > 700).sum() > 100
        brain = np.isin(lab, [LABELS["grey_matter"], LABELS["white_matter"]])
        assert 20 <= np.median(hu[brain]) <= 50
        grey = np.median(hu[lab == LABELS["grey_matter"]])
        white = np.median(hu[lab == LABELS["white_matter"]])
        assert 3 <= grey - white <= 18  # grey/white distinction
        assert np.median(hu[lab == LABELS["csf"]]) < white


def test_air_pockets_and_lesions_occur() -> None:
    gas = lesions = 0
    for seed in range(12):
        hu, lab = phantom_labels("abdomen", 64, seed)
        gas += int(((lab == LABELS["air"]) & (hu < -900)).sum() > 0)
        lesions += int((lab == LABELS["lesion"]).any())
    assert gas >= 10 and lesions >= 4


def test_smooth_tissue_texture(rendered) -> None:
    """Soft tissue carries a few HU of spatially correlated (band-limited) texture."""
    for hu, lab in rendered["abdomen"]:
        liver = lab == LABELS["liver"]
        inner = liver & np.roll(liver, 1, 1) & np.roll(liver, -1, 1)
        values = hu[inner]
        assert 1.5 <= values.std() <= 20.0
        right = np.roll(hu, -1, 1)[inner]
        assert np.corrcoef(values, right)[0, 1] > 0.5


def test_anatomy_placement(rendered) -> None:
    """Radiological convention: patient right on image left, anterior up."""
    for _, lab in rendered["chest"]:
        cx = np.nonzero((lab != 0).any(axis=0))[0][[0, -1]].mean()
        hx, hy = _centroid(lab, "blood")  # heart (plus aorta and vessels)
        _, spine_y = _centroid(lab, "marrow")
        assert hx > cx and hy < spine_y  # heart on the patient's left, anterior to the spine
        lung = lab == LABELS["lung"]
        for half in (lung[:, : int(cx)], lung[:, int(cx):]):
            assert half.sum() > 0.3 * lung.sum()  # two lungs
    for _, lab in rendered["abdomen"]:
        cx = np.nonzero((lab != 0).any(axis=0))[0][[0, -1]].mean()
        lx, _ = _centroid(lab, "liver")
        assert lx < cx  # liver on the image left
        kid = lab == LABELS["kidney"]
        assert kid[:, : int(cx)].any() and kid[:, int(cx):].any()
        _, spine_y = _centroid(lab, "cortical_bone")
        assert spine_y > 64
    for _, lab in rendered["head"]:
        brain = np.isin(lab, [LABELS["grey_matter"], LABELS["white_matter"], LABELS["csf"]])
        bone = lab == LABELS["cortical_bone"]
        ys, xs = np.nonzero(brain)
        yc, xc = int(ys.mean()), int(xs.mean())
        # the skull surrounds the brain on every ray from its centre
        for row in (bone[yc, :xc], bone[yc, xc:], bone[:yc, xc], bone[yc:, xc]):
            assert row.any()


def test_random_phantom_kinds() -> None:
    assert np.array_equal(random_phantom(32, 7), phantom(kind_for_seed(7), 32, 7))
    counts = {k: 0 for k in KINDS}
    for s in range(600):
        counts[kind_for_seed(s)] += 1
    assert all(150 <= c <= 250 for c in counts.values()), counts
    assert all(kind_for_seed(s, ("head",)) == "head" for s in range(20))


def test_bad_input() -> None:
    with pytest.raises(InputError):
        phantom("knee", 32, 0)
    with pytest.raises(InputError):
        phantom("chest", 4, 0)
    with pytest.raises(InputError):
        phantom("chest", 32.5, 0)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        phantom("chest", 32, -1)
    with pytest.raises(InputError):
        PhantomDataset(32, 4, kinds=("chest", "knee"))
    with pytest.raises(InputError):
        PhantomDataset(32, -1)
    with pytest.raises(InputError):
        PhantomDataset.split("holdout", 32, 4)
    with pytest.raises(InputError):
        PhantomDataset.split("train", 32, 10_000_001)


def test_dataset_items_and_indexing() -> None:
    ds = PhantomDataset(32, 5, seed=100)
    assert len(ds) == 5
    item = ds[2]
    assert isinstance(item, torch.Tensor) and item.dtype == torch.float32
    assert item.shape == (1, 32, 32)
    assert np.array_equal(item[0].numpy(), random_phantom(32, 102))
    assert torch.equal(ds[-1], ds[4])
    with pytest.raises(IndexError):
        ds[5]
    heads = PhantomDataset(32, 3, seed=5, kinds=("head",))
    assert all(np.array_equal(heads[i][0].numpy(), phantom("head", 32, 5 + i)) for i in range(3))
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    assert next(iter(loader)).shape == (5, 1, 32, 32)


def test_splits_disjoint() -> None:
    n = 1000
    seeds = {name: {PhantomDataset.split(name, 32, n).seed_of(i) for i in range(n)}
             for name in SPLIT_SEEDS}
    assert all(len(s) == n for s in seeds.values())
    assert not seeds["train"] & seeds["val"]
    assert not seeds["train"] & seeds["test"]
    assert not seeds["val"] & seeds["test"]
    big = PhantomDataset.split("train", 32, 10_000_000)
    assert big.seed_of(len(big) - 1) < SPLIT_SEEDS["val"]
    test = PhantomDataset.split("test", 32, 3)
    assert np.array_equal(test[0][0].numpy(), random_phantom(32, SPLIT_SEEDS["test"]))


def test_cache_round_trip(tmp_path) -> None:
    plain = PhantomDataset(32, 3, seed=40)
    cached = PhantomDataset(32, 3, seed=40, cache_dir=tmp_path / "cache")
    first = [cached[i] for i in range(3)]
    files = sorted(os.listdir(tmp_path / "cache"))
    assert len(files) == 3 and all(f.endswith(".npy") for f in files)  # no temp files left
    for i in range(3):
        assert torch.equal(first[i], plain[i])  # bit-exact
        assert torch.equal(cached[i], plain[i])
    # the cache is reused: a marked file is returned as stored
    path = tmp_path / "cache" / files[0]
    marked = np.load(path)
    marked[0, 0] = 1234.5
    np.save(path, marked)
    reread = [cached[i][0, 0, 0].item() for i in range(3)]
    assert 1234.5 in reread
