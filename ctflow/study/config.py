"""The study configuration: a TOML file read with tomllib and validated before any work.

Every problem is reported as one line naming the file and the key, e.g.
``study.toml: acquisition.views: expected positive integers, got "x"``.  Relative paths in
the file are taken relative to the file's folder.  Sections and keys (defaults in brackets):

* ``[study]``: ``name`` [file stem], ``size`` image size [64], ``seeds`` repetitions, each
  with its own measurement noise and solver randomness [[0]], ``prior`` for the flow
  methods ["default"], ``device`` where flow methods run: cpu | cuda | auto [cpu],
  ``threads`` torch threads per task [1].
* ``[data]``: ``source`` phantom | dicom | hdf5 | realct, ``path`` (a DICOM series folder,
  an HDF5 file with ``/image``, or the real-CT folder; optional for realct), ``split``
  [phantom: test; realct: val], ``images`` how many images [4].
* ``[acquisition]`` (lists; the grid is their product): ``geometry`` parallel | fan
  [["parallel"]], ``views`` [[60]], ``photons`` incident photons per ray or "none"
  (noiseless) [["none"]], ``angular_range_deg`` degrees or "full" (180° parallel,
  360° fan) [["full"]], ``dead_views`` views whose readings are zeroed [[0]].
* ``[methods.NAME]``: one table per method, its options (checked against the solver).
* ``[metrics]``: ``names`` of psnr, ssim, rmse_hu [all three]; optional region: either
  ``region_hu_window = [lo, hi]`` (pixels whose ground truth lies in the window) or
  ``region_mask`` (a .npy boolean array of size²).
* ``[report]``: ``reference`` method of the paired differences [tv if run, else the first
  method], ``examples`` images shown in montages [1].
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib  # type: ignore[import-not-found]

SOURCES = ("phantom", "dicom", "hdf5", "realct")
GEOMETRIES = ("parallel", "fan")
METRICS = ("psnr", "ssim", "rmse_hu")
DEVICES = ("cpu", "cuda", "auto")
SECTIONS = {
    "study": ("name", "size", "seeds", "prior", "device", "threads"),
    "data": ("source", "path", "split", "images"),
    "acquisition": ("geometry", "views", "photons", "angular_range_deg", "dead_views"),
    "methods": None,  # any method name
    "metrics": ("names", "region_hu_window", "region_mask"),
    "report": ("reference", "examples"),
}
MAX_SIZE = 1024


@dataclass(frozen=True)
class DataSpec:
    """Where the ground-truth images come from (a plain, picklable description)."""

    source: str
    path: str | None
    split: str
    images: int


@dataclass(frozen=True)
class Acquisition:
    """The acquisition grid: every combination of these values is one setting."""

    geometry: tuple[str, ...] = ("parallel",)
    views: tuple[int, ...] = (60,)
    photons: tuple[float | None, ...] = (None,)
    angular_range_deg: tuple[float | None, ...] = (None,)  # None: the full range
    dead_views: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class MetricSpec:
    names: tuple[str, ...] = METRICS
    region_hu_window: tuple[float, float] | None = None
    region_mask: str | None = None


@dataclass
class StudyConfig:
    """A validated study: what to reconstruct, how, and how to score it."""

    name: str
    size: int
    seeds: tuple[int, ...]
    prior: str
    device: str
    threads: int
    data: DataSpec
    acquisition: Acquisition
    methods: dict[str, dict[str, Any]]
    metrics: MetricSpec
    reference: str
    examples: int
    source_file: str = ""
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The JSON-able description stored as ``config.json`` (the mask by its path)."""
        out = asdict(self)
        out.pop("mask")
        out.pop("source_file")
        return json.loads(json.dumps(out))

    def needs_prior(self) -> bool:
        from ..solvers import SOLVERS

        return any(SOLVERS[m].needs_prior for m in self.methods)


class _Checker:
    """Raises InputError('FILE: KEY: message') for the key being checked."""

    def __init__(self, label: str):
        self.label = label

    def fail(self, key: str, message: str) -> None:
        raise InputError(f"{self.label}: {key}: {message}")

    def table(self, raw: dict[str, Any], name: str) -> dict[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            self.fail(name, f"expected a table [{name}], got {_show(value)}")
        allowed = SECTIONS[name]
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    self.fail(f"{name}.{key}", f"unknown key; expected one of {', '.join(allowed)}")
        return value

    def text(self, value: Any, key: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a text value, got {_show(value)}")
        if choices is not None and value not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}, got {_show(value)}")
        return value

    def integer(self, value: Any, key: str, minimum: int, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
                or (maximum is not None and value > maximum):
            top = f" and <= {maximum}" if maximum is not None else ""
            self.fail(key, f"expected an integer >= {minimum}{top}, got {_show(value)}")
        return int(value)

    def listed(self, value: Any, key: str) -> list[Any]:
        items = value if isinstance(value, list) else [value]
        if not items:
            self.fail(key, "expected at least one value, got an empty list")
        if len({json.dumps(v, sort_keys=True, default=str) for v in items}) != len(items):
            self.fail(key, f"values repeat in {_show(value)}")
        return items

    def ints(self, value: Any, key: str, minimum: int, what: str) -> tuple[int, ...]:
        items = self.listed(value, key)
        for v in items:
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                self.fail(key, f"expected {what}, got {_show(v)}")
        return tuple(int(v) for v in items)


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study file; InputError naming the file and key on any problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such study file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path.name}: is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path.name}: not valid TOML ({exc})") from None
    return parse_config(raw, base=path.resolve().parent, label=path.name, stem=path.stem)


def parse_config(raw: dict[str, Any], base: Path, label: str = "study",
                 stem: str = "study") -> StudyConfig:
    """Validate the parsed TOML ``raw`` (paths relative to ``base``) into a StudyConfig."""
    chk = _Checker(label)
    for key in raw:
        if key not in SECTIONS:
            chk.fail(key, f"unknown section; expected one of {', '.join(SECTIONS)}")
    study = chk.table(raw, "study")
    size = chk.integer(study.get("size", 64), "study.size", 8, MAX_SIZE)
    seeds = chk.ints(study.get("seeds", [0]), "study.seeds", 0, "integers >= 0")
    prior = chk.text(study.get("prior", "default"), "study.prior")
    device = chk.text(study.get("device", "cpu"), "study.device", DEVICES)
    threads = chk.integer(study.get("threads", 1), "study.threads", 1, 256)
    name = chk.text(study.get("name", stem), "study.name")
    data = _data(chk, chk.table(raw, "data"), base)
    acquisition = _acquisition(chk, chk.table(raw, "acquisition"), size)
    methods = _methods(chk, chk.table(raw, "methods"))
    metrics, mask = _metrics(chk, chk.table(raw, "metrics"), base, size)
    report = chk.table(raw, "report")
    default_ref = "tv" if "tv" in methods else next(iter(methods))
    reference = chk.text(report.get("reference", default_ref), "report.reference")
    if reference not in methods:
        chk.fail("report.reference", f"{_show(reference)} is not one of the study's methods "
                 f"({', '.join(methods)})")
    examples = chk.integer(report.get("examples", 1), "report.examples", 0, data.images)
    config = StudyConfig(name=name, size=size, seeds=seeds, prior=prior, device=device,
                         threads=threads, data=data, acquisition=acquisition, methods=methods,
                         metrics=metrics, reference=reference, examples=examples,
                         source_file=label, mask=mask)
    return config


def _data(chk: _Checker, table: dict[str, Any], base: Path) -> DataSpec:
    if "source" not in table:
        chk.fail("data.source", f"missing; expected one of {', '.join(SOURCES)}")
    source = chk.text(table["source"], "data.source", SOURCES)
    images = chk.integer(table.get("images", 4), "data.images", 1, 100_000)
    default_split = {"phantom": "test", "realct": "val"}.get(source, "all")
    split = chk.text(table.get("split", default_split), "data.split")
    if source == "phantom" and split not in ("test", "val", "train"):
        chk.fail("data.split", f"expected test, val or train for phantoms, got {_show(split)}")
    if source == "realct" and split not in ("val", "ood", "train"):
        chk.fail("data.split", f"expected val, ood or train for realct, got {_show(split)}")
    raw_path = table.get("path")
    path: str | None = None
    if raw_path is not None:
        p = Path(chk.text(raw_path, "data.path")).expanduser()
        p = p if p.is_absolute() else base / p
        path = str(p)
    if source in ("dicom", "hdf5") and path is None:
        chk.fail("data.path", f"missing; a {source} source needs a path")
    if source == "phantom" and path is not None:
        chk.fail("data.path", "the phantom source takes no path")
    if path is not None:
        p = Path(path)
        if source == "dicom" and not p.is_dir():
            chk.fail("data.path", f"{_show(raw_path)} is not a folder")
        if source == "hdf5" and not p.is_file():
            chk.fail("data.path", f"{_show(raw_path)} is not a file")
        if source == "realct" and not p.exists():
            chk.fail("data.path", f"{_show(raw_path)} does not exist")
    return DataSpec(source=source, path=path, split=split, images=images)


def _acquisition(chk: _Checker, table: dict[str, Any], size: int) -> Acquisition:
    geometry = tuple(chk.text(g, "acquisition.geometry", GEOMETRIES)
                     for g in chk.listed(table.get("geometry", ["parallel"]),
                                         "acquisition.geometry"))
    views = chk.ints(table.get("views", [60]), "acquisition.views", 1, "positive integers")
    photons: list[float | None] = []
    for v in chk.listed(table.get("photons", ["none"]), "acquisition.photons"):
        if v == "none":
            photons.append(None)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v <= 0:
            chk.fail("acquisition.photons", f'expected positive numbers or "none", got {_show(v)}')
        else:
            photons.append(float(v))
    ranges: list[float | None] = []
    for v in chk.listed(table.get("angular_range_deg", ["full"]), "acquisition.angular_range_deg"):
        if v == "full":
            ranges.append(None)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 360:
            chk.fail("acquisition.angular_range_deg",
                     f'expected degrees in (0, 360] or "full", got {_show(v)}')
        else:
            ranges.append(float(v))
    dead = chk.ints(table.get("dead_views", [0]), "acquisition.dead_views", 0,
                    "integers >= 0")
    if max(dead) * 2 > min(views):
        chk.fail("acquisition.dead_views", f"{max(dead)} dead views leave too few of "
                 f"{min(views)} views (at most half may be dead)")
    return Acquisition(geometry=geometry, views=views, photons=tuple(photons),
                       angular_range_deg=tuple(ranges), dead_views=dead)


def _methods(chk: _Checker, table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from ..errors import MethodError
    from ..solvers import SOLVERS, get_solver
    from ..solvers.options import option_names

    if not table:
        chk.fail("methods", "give at least one method, e.g. [methods.fbp]")
    out: dict[str, dict[str, Any]] = {}
    for name, options in table.items():
        key = f"methods.{name}"
        if name not in SOLVERS:
            chk.fail(key, f"unknown method; choose from {', '.join(SOLVERS)}")
        if not isinstance(options, dict):
            chk.fail(key, f"expected a table of options, got {_show(options)}")
        try:
            _, spec = get_solver(name)
        except MethodError as exc:
            chk.fail(key, str(exc))
        params = option_names(spec.options)  # the registry's declared options
        for opt, value in options.items():
            if opt in ("prior", "seed", "noise_std", "progress", "y", "op"):
                chk.fail(f"{key}.{opt}", "is set by the study, not per method")
            if opt not in params:
                chk.fail(f"{key}.{opt}", f"method {name} takes no such option")
            if isinstance(value, dict):
                chk.fail(f"{key}.{opt}", f"expected a value, got a table {_show(value)}")
        out[name] = dict(options)
    return out


def _metrics(chk: _Checker, table: dict[str, Any], base: Path,
             size: int) -> tuple[MetricSpec, np.ndarray | None]:
    names = tuple(chk.text(n, "metrics.names", METRICS)
                  for n in chk.listed(table.get("names", list(METRICS)), "metrics.names"))
    window = table.get("region_hu_window")
    mask_path = table.get("region_mask")
    if window is not None and mask_path is not None:
        chk.fail("metrics.region_mask", "give either region_hu_window or region_mask, not both")
    win: tuple[float, float] | None = None
    if window is not None:
        ok = isinstance(window, list) and len(window) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in window) and window[0] < window[1]
        if not ok:
            chk.fail("metrics.region_hu_window", f"expected [low, high] HU with low < high, "
                     f"got {_show(window)}")
        win = (float(window[0]), float(window[1]))
    mask = None
    if mask_path is not None:
        p = Path(chk.text(mask_path, "metrics.region_mask")).expanduser()
        p = p if p.is_absolute() else base / p
        mask = _read_mask(chk, p, size)
        mask_path = str(p)
    return MetricSpec(names=names, region_hu_window=win, region_mask=mask_path), mask


def _read_mask(chk: _Checker, path: Path, size: int) -> np.ndarray:
    """A boolean size² mask from a .npy file (never unpickled)."""
    key = "metrics.region_mask"
    if path.suffix != ".npy" or not path.is_file():
        chk.fail(key, f"{_show(str(path.name))}: expected an existing .npy file")
    try:
        mask = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        chk.fail(key, f"{path.name}: not a readable .npy array ({' '.join(str(exc).split())})")
    if mask.shape != (size, size) or mask.dtype.kind not in "biu":
        chk.fail(key, f"{path.name}: expected a {size}x{size} boolean array, got "
                 f"{mask.dtype} {mask.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        chk.fail(key, f"{path.name}: the mask selects no pixel")
    return mask
