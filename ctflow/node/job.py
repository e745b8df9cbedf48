"""The node's job (JOB.toml): simulate an acquisition of a received CT series and
reconstruct it with one or more methods, one derived series per method.

Schema (every key checked when the file is read; an unknown or invalid key is one
InputError naming it)::

    image_size = 64            # optional: resample the received slices to this size
    [acquisition]
    views = 60                 # required, 1–4096
    geometry = "parallel"      # parallel (views over [0, π)) | fan (over [0, 2π))
    photons = 1e5              # optional Poisson noise; or noise = 0.01 (relative
                               # Gaussian); neither: noiseless
    seed = 0                   # noise seed; the batch of slices from slice k is
                               # reconstructed with seed + k
    [[methods]]
    name = "fbp"               # a ctflow method (ctflow reconstruct --help lists them)
    options = { filter = "hann" }
    [[methods]]
    name = "conjugate"
    prior = "default"          # flow methods: the prior (default: "default")
    [output]
    window = [40, 400]         # display window (centre, width) in HU

Sizes: every method runs at ``image_size`` when given, else at the received size; a flow
method whose prior does not serve that size (``Prior.sizes()``; the default real-anatomy
prior serves 64²–256², the phantom priors one size each) runs at the largest size below it
that the prior serves.  Resampling is linear with anti-aliasing, the pixel size scaled so
the field of view is kept, and the series description and the log say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:  # Python ≥ 3.11; tomli is the same parser for 3.10
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import InputError

MAX_VIEWS = 4096
MAX_IMAGE_SIZE = 2048
GEOMETRIES = ("parallel", "fan")
TOP_KEYS = {"image_size", "acquisition", "methods", "output"}
ACQ_KEYS = {"views", "geometry", "photons", "noise", "seed"}
METHOD_KEYS = {"name", "options", "prior"}
OUTPUT_KEYS = {"window"}
GAP_FACTOR = 1.5  # a step between slices above 1.5 × the median spacing: missing slice(s)
BATCH = 8  # slices reconstructed together (one batched call; the network runs batched)


class Parked(Exception):
    """The node is stopping: the job stopped between two batches and will run again."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    prior: str = "default"


@dataclass(frozen=True)
class JobSpec:
    """A validated JOB.toml."""

    views: int
    geometry: str = "parallel"
    photons: float | None = None
    noise: float | None = None
    seed: int = 0
    methods: tuple[MethodSpec, ...] = ()
    image_size: int | None = None
    window: tuple[float, float] = (40.0, 400.0)
    source: str = "JOB.toml"


@dataclass
class DerivedSeries:
    """One result of a job: the written folder, its description and notes."""

    method: str
    folder: Path
    description: str
    notes: list[str]


# ------------------------------------------------------------------------------ parsing
def load_job(path: str | Path) -> JobSpec:
    """Read and validate JOB.toml (InputError naming the file and key)."""
    name = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(f"{name}: no such job file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{name}: not valid TOML ({exc})") from exc
    return parse_job(data, name)


def parse_job(data: dict[str, Any], name: str = "JOB.toml") -> JobSpec:
    """Validate a parsed job table; every method and option is checked now (and every
    prior loaded), so a bad job fails before the node accepts anything."""
    _unknown(data, TOP_KEYS, name, "")
    acq = _table(data, "acquisition", name, required=True)
    _unknown(acq, ACQ_KEYS, name, "acquisition.")
    if "views" not in acq:
        raise InputError(f"{name}: acquisition.views is required")
    views = _int(acq["views"], 1, MAX_VIEWS, name, "acquisition.views")
    geometry = acq.get("geometry", "parallel")
    if geometry not in GEOMETRIES:
        raise InputError(f"{name}: acquisition.geometry {geometry!r} must be parallel or fan")
    if "photons" in acq and "noise" in acq:
        raise InputError(f"{name}: give acquisition.photons or acquisition.noise, not both")
    photons = _positive(acq["photons"], name, "acquisition.photons") if "photons" in acq \
        else None
    noise = _positive(acq["noise"], name, "acquisition.noise", zero=True) if "noise" in acq \
        else None
    seed = _int(acq.get("seed", 0), 0, 2**63 - 1, name, "acquisition.seed")
    size = data.get("image_size")
    size = None if size is None else _int(size, 8, MAX_IMAGE_SIZE, name, "image_size")
    methods = _methods(data.get("methods"), name)
    out = _table(data, "output", name)
    _unknown(out, OUTPUT_KEYS, name, "output.")
    window = out.get("window", [40.0, 400.0])
    if not (isinstance(window, list) and len(window) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in window)
            and np.isfinite(window).all() and window[1] > 0):
        raise InputError(f"{name}: output.window must be [centre, width] in HU, width > 0")
    return JobSpec(views, geometry, photons, noise, seed, methods, size,
                   (float(window[0]), float(window[1])), name)


def _methods(items: Any, name: str) -> tuple[MethodSpec, ...]:
    from ..solvers import SOLVERS, get_solver
    from ..solvers.options import option_names

    if not isinstance(items, list) or not items:
        raise InputError(f"{name}: methods must be a non-empty list of [[methods]] tables")
    specs = []
    for i, item in enumerate(items):
        where = f"methods[{i}]"
        if not isinstance(item, dict):
            raise InputError(f"{name}: {where} must be a table")
        _unknown(item, METHOD_KEYS, name, f"{where}.")
        method = item.get("name")
        if method not in SOLVERS:
            raise InputError(f"{name}: {where}.name {method!r} is not a ctflow method "
                             f"({', '.join(SOLVERS)})")
        options = item.get("options", {})
        if not isinstance(options, dict):
            raise InputError(f"{name}: {where}.options must be a table")
        _, spec = get_solver(method)
        for key in options:
            if key not in option_names(spec.options):  # the registry's declared options
                raise InputError(f"{name}: {where}.options.{key}: method {method!r} has "
                                 "no such option")
        prior = item.get("prior", "default")
        if not isinstance(prior, str) or not prior:
            raise InputError(f"{name}: {where}.prior must be a prior name or path")
        if "prior" in item and not spec.needs_prior:
            raise InputError(f"{name}: {where}.prior: method {method!r} uses no prior")
        if spec.needs_prior:
            from .. import load_prior

            try:
                load_prior(prior)
            except Exception as exc:
                raise InputError(f"{name}: {where}.prior {prior!r}: {exc}") from exc
        specs.append(MethodSpec(method, dict(options), prior))
    return tuple(specs)


def _unknown(table: dict[str, Any], allowed: set[str], name: str, prefix: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise InputError(f"{name}: unknown key {prefix}{extra[0]} (allowed: "
                         f"{', '.join(sorted(allowed))})")


def _table(data: dict[str, Any], key: str, name: str, required: bool = False) -> dict:
    value = data.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{name}: [{key}] table is {'missing' if value is None else 'invalid'}")
    return value


def _int(value: Any, lo: int, hi: int, name: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(f"{name}: {key} must be an integer in {lo}–{hi}, got {value!r}")
    return int(value)


def _positive(value: Any, name: str, key: str, zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) \
        and np.isfinite(value) and (value >= 0 if zero else value > 0)
    if not ok:
        raise InputError(f"{name}: {key} must be a {'non-negative' if zero else 'positive'} "
                         f"number, got {value!r}")
    return float(value)


# ------------------------------------------------------------------------------ checks
def check_volume(vol: Any, name: str) -> None:
    """Refuse what the job cannot use: non-square images or pixels, missing slices
    (a step between consecutive slices above GAP_FACTOR × the median spacing)."""
    _, rows, cols = vol.hu.shape
    dz, dy, dx = vol.spacing
    if rows != cols:
        raise InputError(f"{name}: images are {rows}×{cols}; the job needs square images")
    if abs(dx - dy) > 1e-3 * dx:
        raise InputError(f"{name}: pixels are {dy:g}×{dx:g} mm; the job needs square pixels")
    if len(vol.positions) > 2:
        orientation = np.asarray(vol.orientation, dtype=np.float64)
        normal = np.cross(orientation[:3], orientation[3:])
        s = np.asarray(vol.positions, dtype=np.float64) @ normal
        steps = np.diff(s)
        k = int(np.argmax(steps))
        if steps[k] > GAP_FACTOR * float(np.median(steps)):
            missing = int(round(steps[k] / float(np.median(steps)))) - 1
            raise InputError(f"{name}: about {missing} slice(s) missing between positions "
                             f"{s[k]:.2f} and {s[k + 1]:.2f} mm (spacing "
                             f"{float(np.median(steps)):.2f} mm)")


def describe(spec: JobSpec, method: MethodSpec, size: int) -> str:
    """The series description (≤ 64 characters): method, options, acquisition, size."""
    opts = " ".join(f"{k}={v}" for k, v in sorted(method.options.items()))
    noise = f" {spec.photons:.0e}ph" if spec.photons else \
        (f" noise{spec.noise:g}" if spec.noise else "")
    text = f"ctflow {method.name}{' ' + opts if opts else ''} {spec.views}v " \
           f"{spec.geometry}{noise} {size}px"
    return text if len(text) <= 64 else text[:63] + "…"


# ------------------------------------------------------------------------------ running
class JobRunner:
    """Runs a :class:`JobSpec` on received volumes (priors and operators loaded once)."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self._priors: dict[str, Any] = {}
        self._ops: dict[tuple[int, float], Any] = {}  # an operator's first use is costly

    def prior(self, name: str) -> Any:
        from .. import load_prior

        if name not in self._priors:
            self._priors[name] = load_prior(name)
        return self._priors[name]

    def run(self, vol: Any, name: str, out_folder: Callable[[int, str], Path],
            should_stop: Callable[[], bool] = lambda: False,
            log: Callable[[str], None] = lambda text: None) -> list[DerivedSeries]:
        """Write one derived series per method into ``out_folder(index, method)``."""
        from ..io.dicom import write_series
        from ..solvers import get_solver

        check_volume(vol, name)
        native = int(vol.hu.shape[-1])
        cache: dict[int, tuple[Any, np.ndarray, float, float | None]] = {}
        results = []
        for index, method in enumerate(self.spec.methods):
            _, solver_spec = get_solver(method.name)
            prior = self.prior(method.prior) if solver_spec.needs_prior else None
            wanted = self.spec.image_size or native
            size = prior.sizes().nearest(wanted) if prior is not None else wanted
            notes = []
            if size != native:
                why = (f"the prior {method.prior!r} serves {prior.sizes().describe()}"
                       if prior is not None and size != wanted else "image_size in the job")
                notes.append(f"{method.name} runs at {size}² ({why}; received {native}²)")
                log(f"{name}: {notes[-1]}")
            if size not in cache:
                cache[size] = self._acquire(vol, size)
            op, sino, pixel_mm, sigma = cache[size]
            hu = self._reconstruct(method, op, sino, prior, sigma, should_stop)
            description = describe(self.spec, method, size)
            folder = out_folder(index, method.name)
            derivation = (f"ctflow: simulated {self.spec.geometry}-beam acquisition, "
                          f"{self.spec.views} views, {self._noise_text()}, seed "
                          f"{self.spec.seed}; reconstructed with {method.name}"
                          f"{' ' + str(method.options) if method.options else ''}; "
                          f"{'; '.join(notes)}").rstrip("; ")
            write_series(folder, hu, pixel_mm, float(vol.spacing[0]), method.name,
                         self.spec.views, reference=vol, series_description=description,
                         window=self.spec.window, overwrite=True, derivation=derivation[:1024])
            results.append(DerivedSeries(method.name, folder, description, notes))
        return results

    def _noise_text(self) -> str:
        if self.spec.photons:
            return f"Poisson noise {self.spec.photons:g} photons"
        return f"Gaussian noise {self.spec.noise:g}" if self.spec.noise else "noiseless"

    def _acquire(self, vol: Any, size: int) -> tuple[Any, np.ndarray, float, float | None]:
        """Operator, simulated sinograms, pixel size and noise std at ``size``."""
        import torch

        from ..operators import FanBeam2D, ParallelBeam2D
        from ..simulate import noise_std, simulate_volume

        hu = resample(vol.hu, size)
        pixel_mm = float(vol.spacing[2]) * vol.hu.shape[-1] / size
        cls = ParallelBeam2D if self.spec.geometry == "parallel" else FanBeam2D
        key = (size, round(pixel_mm, 9))
        if key not in self._ops:
            self._ops[key] = cls(image_size=size, views=self.spec.views, pixel_size_mm=pixel_mm)
        op = self._ops[key]
        noisy = bool(self.spec.photons or self.spec.noise)
        clean = simulate_volume(hu, op, seed=self.spec.seed)
        sino = simulate_volume(hu, op, photons=self.spec.photons, noise=self.spec.noise,
                               seed=self.spec.seed) if noisy else clean
        sigma = noise_std(torch.from_numpy(clean), self.spec.photons, self.spec.noise) \
            if noisy else None
        return op, sino, pixel_mm, sigma

    def _reconstruct(self, method: MethodSpec, op: Any, sino: np.ndarray, prior: Any,
                     sigma: float | None, should_stop: Callable[[], bool]) -> np.ndarray:
        """Reconstruct in batches of BATCH slices (the batch starting at slice k uses seed
        + k), in HU; Parked if asked to stop between two batches."""
        import torch

        from .. import reconstruct
        from ..solvers import get_solver
        from ..solvers.options import option_names
        from ..units import mu_to_hu

        _, spec = get_solver(method.name)
        options = dict(method.options)
        if "task_family" in option_names(spec.options):
            options.setdefault("task_family", "ct")
        images = []
        for k in range(0, sino.shape[0], BATCH):
            if should_stop():
                raise Parked(f"stopped before slice {k + 1} of {sino.shape[0]}")
            y = torch.from_numpy(np.ascontiguousarray(sino[k:k + BATCH]))[:, None]
            res = reconstruct(y, op, method=method.name, prior=prior, noise_std=sigma,
                              seed=self.spec.seed + k, **options)
            mu = res.image.detach().cpu().double().numpy()[:, 0]
            images.append(mu_to_hu(mu))
        return np.concatenate(images).astype(np.float32)


def resample(hu: np.ndarray, size: int) -> np.ndarray:
    """Slices (S, N, N) → (S, size, size): linear interpolation, anti-aliased when
    shrinking; the same array when the size already matches."""
    if hu.shape[-1] == size:
        return np.asarray(hu, dtype=np.float32)
    from skimage.transform import resize

    out = resize(hu.astype(np.float64), (hu.shape[0], size, size), order=1,
                 anti_aliasing=size < hu.shape[-1], preserve_range=True, mode="edge")
    return out.astype(np.float32)
