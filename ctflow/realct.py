"""Real CT slices for training, validation and out-of-distribution checks, split by patient.

The licensed pool (``pool_256.h5`` of the real-CT folder: axial slices in HU at 256², one
dataset per series, per-series or per-slice ``patient`` and ``pixel_spacing_mm``
attributes) is read here and split *by patient*, so no patient is in two splits:

* ``val``   — Lung_Dx-A0002 (both reconstruction kernels) and two COVID-19-NY-SBU patients:
  every tuned default is chosen on these;
* ``train`` — every other chest patient;
* ``ood``   — the head series (out-of-distribution check; never trained or tuned on).

The folder is ``$CTFLOW_REALCT_DIR``, else ``shared/data/realct`` beside the repository
(``../shared/data/realct`` from its root).  Attribution: Lung-PET-CT-Dx and
COVID-19-NY-SBU (TCIA, CC BY 4.0), dcm_qa_ct (BSD-2-Clause); see that folder's README.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

POOL_FILE = "pool_256.h5"
POOL_WIDTH = 256  # pool slices are POOL_WIDTH² over the whole field of view
SPLITS = ("train", "val", "ood", "all")
VALIDATION_PATIENTS = frozenset({"Lung_Dx-A0002", "A046441", "A072894"})
OOD_BODY_PARTS = frozenset({"HEAD"})
ATTRIBUTION = ("Real CT: Lung-PET-CT-Dx (Li P. et al., TCIA 2020, doi:10.7937/TCIA.2020.NNC2-0461, "
               "CC BY 4.0), COVID-19-NY-SBU (Saltz J. et al., TCIA 2021, "
               "doi:10.7937/TCIA.BBAG-2923, CC BY 4.0), dcm_qa_ct head series (BSD-2-Clause).")


@dataclass(frozen=True)
class RealSlice:
    """One real axial slice: HU image (float32, square), its pixel size and provenance."""

    hu: np.ndarray
    pixel_spacing_mm: float
    patient: str
    series: str
    body_part: str


def realct_dir() -> Path:
    """The real-CT folder (``$CTFLOW_REALCT_DIR`` or ``../shared/data/realct``)."""
    env = os.environ.get("CTFLOW_REALCT_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "realct"


def split_of(patient: str, body_part: str) -> str:
    """The split a patient's slices belong to (see the module docstring)."""
    if body_part.upper() in OOD_BODY_PARTS:
        return "ood"
    return "val" if patient in VALIDATION_PATIENTS else "train"


def pool_slices(split: str = "val", folder: str | os.PathLike | None = None
                ) -> list[RealSlice]:
    """The slices of ``split`` (train | val | ood | all) of the pool, in file order."""
    import h5py

    if split not in SPLITS:
        raise InputError(f"unknown real-CT split {split!r}; choose one of {', '.join(SPLITS)}")
    path = Path(folder) if folder is not None else realct_dir()
    path = path / POOL_FILE if path.is_dir() else path
    if not path.is_file():
        raise InputError(f"{path}: real-CT pool not found (set CTFLOW_REALCT_DIR)")
    out: list[RealSlice] = []
    with h5py.File(path, "r") as fh:
        for name in sorted(fh):
            data = fh[name]
            count = int(data.shape[0])
            patients = _per_slice(data.attrs.get("patient", name), count)
            spacings = _per_slice(data.attrs.get("pixel_spacing_mm", 1.0), count)
            body = str(_text(data.attrs.get("body_part", "")))
            for i in range(count):
                patient = str(_text(patients[i]))
                if split != "all" and split_of(patient, body) != split:
                    continue
                out.append(RealSlice(hu=np.asarray(data[i], dtype=np.float32),
                                     pixel_spacing_mm=float(spacings[i]), patient=patient,
                                     series=name, body_part=body))
    return out


def _per_slice(value: object, count: int) -> list[object]:
    values = np.atleast_1d(np.asarray(value))
    return list(values) if values.size == count else [values.reshape(-1)[0]] * count


def _text(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


def resized(hu: np.ndarray, size: int) -> np.ndarray:
    """A square HU slice resized to size×size (bilinear, anti-aliased when shrinking)."""
    import torch

    if hu.shape == (size, size):
        return hu.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear",
                                          align_corners=False, antialias=True)
    return out[0, 0].numpy()


def validation_images(size: int, count: int | None = None, split: str = "val",
                      folder: str | os.PathLike | None = None) -> list[np.ndarray]:
    """HU images of ``split`` resized to size² — evenly spread over the split's slices
    when ``count`` is given (deterministic), every slice otherwise."""
    slices = pool_slices(split, folder)
    if count is not None and count < len(slices):
        picks = np.linspace(0, len(slices) - 1, count).round().astype(int)
        slices = [slices[i] for i in picks]
    return [resized(s.hu, size) for s in slices]


def training_patches(slices: list[RealSlice], size: int, count: int, seed: int = 0,
                     min_crop: int = 64) -> np.ndarray:
    """``count`` augmented training images (count, size, size) in HU from real slices.

    Each: a patient drawn uniformly (so one long series does not dominate), one of its
    slices, a square crop of side c drawn log-uniformly in [min_crop, full width] at a
    random position (c = full width: the whole slice), a left–right flip with probability
    1/2 (anatomy keeps its up–down orientation), an intensity scale 1 ± 0.03 about water
    (HU·s), resized to size² with anti-aliasing.  Crops at several
    scales let one network serve images of several pixel sizes.
    """
    if not slices:
        raise InputError("no real-CT training slices")
    rng = np.random.default_rng(seed)
    by_patient: dict[str, list[RealSlice]] = {}
    for s in slices:
        by_patient.setdefault(s.patient, []).append(s)
    patients = sorted(by_patient)
    out = np.empty((count, size, size), dtype=np.float32)
    for k in range(count):
        group = by_patient[patients[rng.integers(len(patients))]]
        hu = group[rng.integers(len(group))].hu
        width = hu.shape[0]
        low = min(min_crop, width)
        crop = int(round(np.exp(rng.uniform(np.log(low), np.log(width)))))
        top, left = rng.integers(0, width - crop + 1, size=2)
        patch = hu[top:top + crop, left:left + crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        scale = 1.0 + rng.uniform(-0.03, 0.03)
        out[k] = resized(np.ascontiguousarray(patch) * scale, size)
    return out
