"""2-D CT scan geometry: one small immutable value that validates itself, serialises to the
HDF5 geometry JSON (DESIGN §3) and converts to ASTRA geometry dictionaries.

:class:`CTGeometry` is a frozen dataclass (derive a changed copy with
``dataclasses.replace``) whose ``angles`` array is read-only.  Two geometries are equal when
every field is equal and the angles agree within :data:`ANGLE_ATOL` radians; the hash covers
every field but the angle values (only their count), so equal geometries always hash alike.
:meth:`CTGeometry.cache_key` stays exact (bit-for-bit angles): it names cached matrices.

World coordinates (mm): x to the right (column index), y upwards (row 0 is the top row),
origin at the image centre.  Pixel (r, c) has centre ((c − (N−1)/2)·p, ((N−1)/2 − r)·p).
For angle θ, parallel rays run along (sin θ, −cos θ) and the detector axis is
(cos θ, sin θ), so a point projects to s = x cos θ + y sin θ.  Fan beam: the source sits at
D_so·(sin θ, −cos θ), the detector centre at D_od·(−sin θ, cos θ) (ASTRA ``fanflat``).
Detector bin i has centre s_i = (i − (n_det − 1)/2)·d.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, TypeGuard

import numpy as np

from .errors import GeometryError

GEOMETRY_TYPES = ("parallel", "fan")
SOURCE_ORIGIN_FOV = 4.0  # default fan source–origin distance, in fields of view
ORIGIN_DET_FOV = 2.0  # default fan origin–detector distance, in fields of view
ANGLE_ATOL = 1e-9  # radians: angles closer than this count as equal in ``==``
_JSON_KEYS = ("type", "image_size", "pixel_size_mm", "det_count", "det_spacing_mm",
              "source_origin_mm", "origin_det_mm")


@dataclass(frozen=True, eq=False)
class CTGeometry:
    """A 2-D parallel- or fan-beam (flat detector) scan of a square image; immutable.

    ``angles`` (radians, float64, read-only) live in the HDF5 ``/angles`` dataset, not in
    the JSON.
    """

    type: str
    image_size: int
    pixel_size_mm: float
    det_count: int
    det_spacing_mm: float
    source_origin_mm: float | None = None
    origin_det_mm: float | None = None
    angles: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        angles = np.asarray(self.angles, dtype=np.float64).copy()
        angles.flags.writeable = False
        object.__setattr__(self, "angles", angles)
        self.validate()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling and copying: the stored fields, the angles read-only again."""
        self.__dict__.update(state)
        self.angles.flags.writeable = False

    def __eq__(self, other: object) -> bool:
        """Every field equal; angles of the same count agreeing within ANGLE_ATOL."""
        if not isinstance(other, CTGeometry):
            return NotImplemented
        if self._scalars() != other._scalars() or self.angles.shape != other.angles.shape:
            return False
        return bool(np.all(np.abs(self.angles - other.angles) <= ANGLE_ATOL))

    def __hash__(self) -> int:
        """Hash of the scalar fields and the number of views.  The angle values are left
        out on purpose: rounding them would put two angles within ANGLE_ATOL of each other
        on different sides of a rounding boundary, giving equal geometries different
        hashes."""
        return hash((self._scalars(), self.angles.shape))

    def _scalars(self) -> tuple[Any, ...]:
        """Every field but the angles, in declaration order."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "angles")

    # -- checks ------------------------------------------------------------------------
    def validate(self) -> None:
        """GeometryError naming the first impossible value."""
        if self.type not in GEOMETRY_TYPES:
            raise GeometryError(f"geometry type must be 'parallel' or 'fan', got {self.type!r}")
        if not _is_int(self.image_size) or self.image_size < 2:
            raise GeometryError(f"image_size must be an integer >= 2, got {self.image_size!r}")
        for name in ("pixel_size_mm", "det_spacing_mm"):
            value = getattr(self, name)
            if not _is_pos(value):
                raise GeometryError(f"{name} must be a finite number > 0, got {value!r}")
        if not _is_int(self.det_count) or self.det_count < 1:
            raise GeometryError(f"det_count must be a positive integer, got {self.det_count!r}")
        self._set(image_size=int(self.image_size), det_count=int(self.det_count),
                  pixel_size_mm=float(self.pixel_size_mm),
                  det_spacing_mm=float(self.det_spacing_mm))
        if self.angles.ndim != 1 or self.angles.size == 0:
            raise GeometryError(f"angles must be a non-empty 1-D array, got shape "
                                f"{self.angles.shape}")
        if not np.all(np.isfinite(self.angles)):
            raise GeometryError("angles contain NaN or Inf")
        if self.type == "parallel":
            if self.source_origin_mm is not None or self.origin_det_mm is not None:
                raise GeometryError("parallel-beam geometry takes no source/detector distances")
            return
        if not _is_pos(self.source_origin_mm):
            raise GeometryError(f"fan beam needs source_origin_mm > 0, got "
                                f"{self.source_origin_mm!r}")
        if self.origin_det_mm is None or not (_is_num(self.origin_det_mm)
                                              and self.origin_det_mm >= 0):
            raise GeometryError(f"fan beam needs origin_det_mm >= 0, got {self.origin_det_mm!r}")
        self._set(source_origin_mm=float(self.source_origin_mm),
                  origin_det_mm=float(self.origin_det_mm))
        if self.source_origin_mm <= self.radius_mm:
            raise GeometryError(
                f"impossible fan geometry: the source ({self.source_origin_mm:g} mm from the "
                f"centre) lies inside the image circle (radius {self.radius_mm:g} mm)"
            )

    def _set(self, **values: Any) -> None:
        """Store normalised field values (only validate() does, during construction)."""
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # -- derived quantities ------------------------------------------------------------
    @property
    def num_views(self) -> int:
        return int(self.angles.size)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (self.num_views, self.det_count)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    @property
    def fov_mm(self) -> float:
        """Side length of the square image, N·p."""
        return self.image_size * self.pixel_size_mm

    @property
    def radius_mm(self) -> float:
        """Radius of the circle through the image corners."""
        return self.fov_mm / math.sqrt(2.0)

    @property
    def magnification(self) -> float:
        """(D_so + D_od)/D_so for fan beam, 1 for parallel beam."""
        so, od = self.source_origin_mm, self.origin_det_mm
        if self.type == "parallel" or so is None or od is None:
            return 1.0
        return (so + od) / so

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _JSON_KEYS}

    def to_json(self) -> str:
        """The DESIGN §3 geometry JSON (without angles)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, angles: np.ndarray) -> CTGeometry:
        """Parse and validate the geometry JSON; GeometryError on anything wrong."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise GeometryError(f"geometry is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise GeometryError("geometry JSON must be an object")
        missing = [k for k in _JSON_KEYS[:5] if k not in data]
        if missing:
            raise GeometryError(f"geometry JSON lacks {', '.join(missing)}")
        unknown = sorted(set(data) - set(_JSON_KEYS))
        if unknown:
            raise GeometryError(f"geometry JSON has unknown key(s) {', '.join(unknown)}")
        try:
            arr = np.asarray(angles, dtype=np.float64)
        except (TypeError, ValueError):
            raise GeometryError("angles must be an array of numbers (radians)") from None
        values: dict[str, Any] = {k: data.get(k) for k in _JSON_KEYS}
        return cls(angles=arr, **values)

    def cache_key(self, *extra: object) -> str:
        """Hex digest identifying this geometry (JSON + angles) plus extra settings."""
        h = hashlib.sha256(self.to_json().encode())
        h.update(np.ascontiguousarray(self.angles, dtype="<f8").tobytes())
        for item in extra:
            h.update(repr(item).encode())
        return h.hexdigest()[:24]

    # -- ASTRA ---------------------------------------------------------------------------
    def astra_vol_geom(self) -> dict:
        import astra

        half = self.fov_mm / 2
        return astra.create_vol_geom(self.image_size, self.image_size, -half, half, -half, half)

    def astra_proj_geom(self) -> dict:
        import astra

        if self.type == "parallel":
            return astra.create_proj_geom("parallel", self.det_spacing_mm, self.det_count,
                                          self.angles)
        return astra.create_proj_geom("fanflat", self.det_spacing_mm, self.det_count,
                                      self.angles, self.source_origin_mm, self.origin_det_mm)

    def vectors(self) -> np.ndarray:
        """Per view (src_or_ray_x, src_or_ray_y, det_x, det_y, u_x, u_y) in mm, as ASTRA's
        ``parallel_vec`` (ray direction) / ``fanflat_vec`` (source position)."""
        t = self.angles
        s, c = np.sin(t), np.cos(t)
        d = self.det_spacing_mm
        if self.type == "parallel":
            return np.stack([s, -c, np.zeros_like(t), np.zeros_like(t), c * d, s * d], 1)
        so, od = self.source_origin_mm, self.origin_det_mm
        return np.stack([s * so, -c * so, -s * od, c * od, c * d, s * d], 1)


def make_geometry(
    kind: str,
    image_size: int,
    views: int | np.ndarray | list[float],
    pixel_size_mm: float = 1.0,
    det_count: int | None = None,
    det_spacing_mm: float | None = None,
    source_origin_mm: float | None = None,
    origin_det_mm: float | None = None,
) -> CTGeometry:
    """A CTGeometry with the documented defaults.

    * views: int n → n uniform angles in [0, π) (parallel) or [0, 2π) (fan); else radians.
    * det_spacing_mm: pixel size at the isocentre, i.e. p (parallel) or p·magnification (fan).
    * fan distances: D_so = 4·FOV, D_od = 2·FOV (FOV = N·p).
    * det_count: the smallest count whose detector covers the image diagonal (the image
      circle's shadow for fan beam), plus one bin of margin on each side.
    """
    if not _is_int(image_size) or image_size < 2:
        raise GeometryError(f"image_size must be an integer >= 2, got {image_size!r}")
    if not _is_pos(pixel_size_mm):
        raise GeometryError(f"pixel_size_mm must be a finite number > 0, got {pixel_size_mm!r}")
    fov = image_size * pixel_size_mm
    if kind == "fan":
        source_origin_mm = SOURCE_ORIGIN_FOV * fov if source_origin_mm is None \
            else source_origin_mm
        origin_det_mm = ORIGIN_DET_FOV * fov if origin_det_mm is None else origin_det_mm
    angles = _angles(views, math.pi if kind == "parallel" else 2 * math.pi)
    if det_spacing_mm is None:
        mag = 1.0
        if kind == "fan" and _is_pos(source_origin_mm) and _is_num(origin_det_mm):
            mag = (source_origin_mm + origin_det_mm) / source_origin_mm
        det_spacing_mm = pixel_size_mm * mag
    if det_count is None and _is_pos(det_spacing_mm):
        radius = fov / math.sqrt(2.0)
        half = radius  # parallel: the diagonal's half length
        if kind == "fan" and _is_pos(source_origin_mm) and source_origin_mm > radius \
                and _is_num(origin_det_mm):
            gamma = math.asin(radius / source_origin_mm)
            half = (source_origin_mm + origin_det_mm) * math.tan(gamma)
        det_count = int(math.ceil(2 * half / det_spacing_mm)) + 2
    return CTGeometry(type=kind, image_size=image_size, pixel_size_mm=pixel_size_mm,
                      det_count=det_count if det_count is not None else 0,
                      det_spacing_mm=det_spacing_mm, source_origin_mm=source_origin_mm,
                      origin_det_mm=origin_det_mm, angles=angles)


def _angles(views: int | np.ndarray | list[float], span: float) -> np.ndarray:
    if _is_int(views):
        if views < 1:
            raise GeometryError(f"views must be >= 1, got {views}")
        return np.linspace(0.0, span, int(views), endpoint=False)
    try:
        arr = np.asarray(views, dtype=np.float64)
    except (TypeError, ValueError):
        raise GeometryError(f"views must be an int or an array of angles, got {views!r}") \
            from None
    if arr.ndim != 1:
        raise GeometryError(f"angles must be 1-D, got shape {arr.shape}")
    return arr


def _is_int(v: object) -> TypeGuard[int]:
    """An integer (Python or numpy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: object) -> TypeGuard[float]:
    """A finite real number (Python or numpy), not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and math.isfinite(float(v))


def _is_pos(v: object) -> TypeGuard[float]:
    """A finite number > 0."""
    return _is_num(v) and float(v) > 0
