"""Tuned solver presets, stored beside the prior they were tuned with.

A prior ``NAME`` (``NAME.safetensors`` + ``NAME.json``) may have ``NAME.presets.json``: the
solver options chosen on validation data *with that prior*.  One schema for every method::

    {"format": "ctflow-presets", "version": 1, "prior": NAME,
     "methods": {METHOD: [RECORD, ...], ...}}

    RECORD = {"family": "ct" | "inpainting" | "sr" | "blur",   # task family (required)
              "size": 64,            # image size it was tuned at (required)
              "noisy": false,        # tuned on noisy data (default false)
              "mask": null,          # mask kind, e.g. "scattered" (default null)
              "nfe": 5,              # budget it was tuned at (default null: any budget)
              "requires": {"jacobian": false},   # option values it is valid for (default {})
              "options": {...},      # the tuned option values
              "tuned": {...}}        # provenance: prior, command, score (not used to select)

Precedence rule (:func:`select_record`), for a call with task family F, noise, mask kind,
image size N and budget B, and the call's values of the options a record may require:

1. the method's records of family F (none when F is unknown: generic defaults);
2. whose ``requires`` all equal the call's option values (given, else generic);
3. tuned on data of the call's noise (noisy / noiseless); if none, the noiseless ones;
4. tuned for the call's mask kind; if none, those without a mask kind;
5. tuned at the size nearest to N (the smaller on a tie);
6. tuned at the largest budget ≤ B; if none, the smallest budget (``nfe`` null counts as 0).

The call's options are then: the method's generic defaults, overlaid by the selected
record's ``options``, overlaid by every option the caller gave.  A prior without a presets
file gets the generic defaults (and the solvers say so in their info).  Presets are plain
JSON, validated on load; a malformed file raises ``PriorError`` naming it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PriorError

FORMAT = "ctflow-presets"
VERSION = 1
FAMILIES = ("ct", "inpainting", "sr", "blur")
RECORD_KEYS = {"family", "size", "noisy", "mask", "nfe", "requires", "options", "tuned"}


def presets_path(stem: str | Path) -> Path:
    """``STEM.presets.json`` for a checkpoint stem (``data/priors/phantom-64``)."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".presets.json")


@dataclass(frozen=True)
class Presets:
    """The validated presets of one prior: method → records (see module docstring)."""

    prior: str
    methods: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    path: Path | None = None

    def records(self, method: str) -> Sequence[Mapping[str, Any]]:
        return self.methods.get(method, ())

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "prior": self.prior,
                "about": __doc__.split("\n\n")[1].replace("\n", " "),
                "methods": {m: [dict(r) for r in rs] for m, rs in self.methods.items()}}


def load_presets(path: str | Path) -> Presets | None:
    """The presets at ``path`` (None if there is no such file; PriorError if malformed)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PriorError(f"{path}: not a valid presets file ({exc})") from exc
    return parse_presets(table, path)


def parse_presets(table: object, path: Path | None = None) -> Presets:
    """Validate a presets table (the JSON object) and return it as :class:`Presets`."""
    where = str(path) if path is not None else "presets"
    if not isinstance(table, dict) or table.get("format") != FORMAT \
            or table.get("version") != VERSION:
        raise PriorError(f"{where}: not a {FORMAT} v{VERSION} file")
    methods = table.get("methods")
    if not isinstance(methods, dict):
        raise PriorError(f"{where}: 'methods' must map method names to record lists")
    for method, records in methods.items():
        if not isinstance(records, list):
            raise PriorError(f"{where}: methods.{method} must be a list of records")
        for i, record in enumerate(records):
            _check_record(record, f"{where}: methods.{method}[{i}]")
    return Presets(prior=str(table.get("prior", "")), methods=methods, path=path)


def _check_record(record: object, where: str) -> None:
    if not isinstance(record, dict):
        raise PriorError(f"{where}: a record must be a JSON object")
    unknown = set(record) - RECORD_KEYS
    if unknown:
        raise PriorError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if record.get("family") not in FAMILIES:
        raise PriorError(f"{where}: family must be one of {', '.join(FAMILIES)}")
    size = record.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise PriorError(f"{where}: size must be a positive integer")
    nfe = record.get("nfe")
    if nfe is not None and (isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1):
        raise PriorError(f"{where}: nfe must be a positive integer or null")
    if not isinstance(record.get("noisy", False), bool):
        raise PriorError(f"{where}: noisy must be true or false")
    if record.get("mask") is not None and not isinstance(record["mask"], str):
        raise PriorError(f"{where}: mask must be a string or null")
    for key in ("options", "requires"):
        if not isinstance(record.get(key, {}), dict):
            raise PriorError(f"{where}: {key} must be a JSON object")
    if "options" not in record:
        raise PriorError(f"{where}: a record needs 'options'")


def select_record(records: Sequence[Mapping[str, Any]], family: str | None, noisy: bool,
                  mask: str | None, size: int, nfe: int | None,
                  values: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The record serving a call (steps 1–6 of the module docstring), or None.

    ``values`` holds the call's value of every option a record may require (given, else
    generic)."""
    pool = [r for r in records if family is not None and r["family"] == family
            and all(values.get(k) == v for k, v in r.get("requires", {}).items())]
    same_noise = [r for r in pool if bool(r.get("noisy", False)) == bool(noisy)]
    pool = same_noise or [r for r in pool if not r.get("noisy", False)]
    same_mask = [r for r in pool if r.get("mask") == mask]
    pool = same_mask or [r for r in pool if r.get("mask") is None]
    if not pool:
        return None
    nearest = min({int(r["size"]) for r in pool}, key=lambda n: (abs(n - size), n))
    pool = [r for r in pool if int(r["size"]) == nearest]
    budget = [r for r in pool if nfe is not None and (r.get("nfe") or 0) <= nfe]
    if budget:
        return max(budget, key=lambda r: r.get("nfe") or 0)
    return min(pool, key=lambda r: r.get("nfe") or 0)


def write_presets(presets: Presets, path: str | Path) -> Path:
    """Write ``presets`` as JSON, atomically (temporary file + rename)."""
    from ..io.atomic import atomic_file

    parse_presets(presets.to_json(), Path(path))  # never write what would not load
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(presets.to_json(), indent=1) + "\n", encoding="utf-8")
    return Path(path)


def record_key(record: Mapping[str, Any]) -> tuple:
    """What a record is selected by: (family, size, noisy, mask, nfe, requires)."""
    return (record["family"], int(record["size"]), bool(record.get("noisy", False)),
            record.get("mask") or "", record.get("nfe") or 0,
            tuple(sorted(record.get("requires", {}).items())))


def merge_records(stem: str | Path, prior: str, method: str,
                  new: Sequence[Mapping[str, Any]]) -> Path:
    """Store tuned records in the presets beside the checkpoint ``stem`` (created if
    missing): each new record replaces the ``method`` record with the same
    :func:`record_key`; the file is rewritten atomically.  Returns its path."""
    path = presets_path(stem)
    old = load_presets(path) or Presets(prior=prior)
    keys = {record_key(r) for r in new}
    methods = {m: list(rs) for m, rs in old.methods.items()}
    kept = [r for r in methods.get(method, []) if record_key(r) not in keys]
    methods[method] = sorted(kept + [dict(r) for r in new], key=_sort_key)
    return write_presets(Presets(prior=old.prior or prior, methods=methods), path)


def _sort_key(record: Mapping[str, Any]) -> tuple:
    family, size, noisy, mask, nfe, requires = record_key(record)
    return (family, size, noisy, mask, str(requires), nfe)
