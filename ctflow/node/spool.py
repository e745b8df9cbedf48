"""The node's on-disk spool: every received instance is on disk before it is acknowledged.

Layout (``ROOT`` the spool folder)::

    ROOT/.lock                             one node per spool (an advisory file lock)
    ROOT/series/STUDY_UID/SERIES_UID/
        state.json                         the series' state (below), replaced atomically
        instances/SOP_INSTANCE_UID.dcm     the files as received
        results/NN-METHOD/                 derived series written by the job
    ROOT/dropped/STUDY_UID/SERIES_UID/     series given up on (kept for a person to look at)

A series moves through the states ``received`` (instances arriving) → ``complete`` (idle
long enough; the job runs, and reruns after a failure) → ``processed`` (results written)
→ ``forwarded`` (results stored on the forward peer; the series folder is then removed
unless the node keeps it, ``--keep``).  ``failed`` means the job refused the data (e.g. not
CT, a missing slice) or failed too often; ``dropped`` that an interrupted transfer never
completed.  A new instance of a series sends it back to ``received`` (and discards
results not yet forwarded: they no longer describe the series).  Each state change
rewrites ``state.json`` through :func:`ctflow.io.atomic.atomic_file`, so a restart
(:meth:`Spool.series`) resumes exactly where the node stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, OutputError
from ..io.atomic import atomic_file

STATES = ("received", "complete", "processed", "forwarded", "failed", "dropped")
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
UID_MAX_CHARS = 64
STATE_FILE = "state.json"
STATE_MAX_BYTES = 1 << 20


def check_uid(value: object, what: str) -> str:
    """A DICOM UID (digits and dots, ≤ 64 characters): safe as a file name."""
    text = str(value or "").strip().rstrip("\x00")
    if not text or len(text) > UID_MAX_CHARS or not UID_PATTERN.fullmatch(text):
        raise InputError(f"invalid {what} {text[:80]!r} (a DICOM UID: digits and dots, at "
                         f"most {UID_MAX_CHARS} characters)")
    return text


@dataclass
class SeriesState:
    """The contents of one series' ``state.json``."""

    study_uid: str
    series_uid: str
    state: str = "received"
    instances: int = 0
    generation: int = 0          # +1 per received instance (a job checks it did not move)
    first_received: float = 0.0
    last_received: float = 0.0
    interrupted: bool = False    # the last association that sent instances did not release
    attempts: int = 0            # failed job runs since the series was last received
    forward_attempts: int = 0
    next_try: float = 0.0        # earliest time of the next job run / forwarding attempt
    error: str = ""
    results: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return self.study_uid, self.series_uid

    @staticmethod
    def from_json(data: Any, where: Path) -> SeriesState:
        """Build from parsed JSON, refusing anything malformed (InputError)."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: not a ctflow spool state")
        try:
            state = SeriesState(**{k: data[k] for k in SeriesState.__dataclass_fields__
                                   if k in data})
        except TypeError as exc:
            raise InputError(f"{where}: malformed spool state ({exc})") from exc
        if state.state not in STATES:
            raise InputError(f"{where}: unknown spool state {state.state!r}")
        check_uid(state.study_uid, "StudyInstanceUID")
        check_uid(state.series_uid, "SeriesInstanceUID")
        return state


class Spool:
    """The spool folder; thread-safe (the SCP's association threads and the worker)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock = threading.RLock()
        self._lock_file: Any = None
        try:
            (self.root / "series").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.root}: cannot create the spool ({exc.strerror})") from exc

    # ------------------------------------------------------------------- ownership
    def acquire(self) -> None:
        """Take the spool's advisory lock; OutputError if another node holds it."""
        handle = open(self.root / ".lock", "a+")  # noqa: SIM115 (held while serving)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OutputError(f"{self.root}: spool in use by another ctflow node") from None
        self._lock_file = handle

    def release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # ------------------------------------------------------------------- paths
    def folder(self, study_uid: str, series_uid: str) -> Path:
        return self.root / "series" / study_uid / series_uid

    def instances_folder(self, key: tuple[str, str]) -> Path:
        return self.folder(*key) / "instances"

    def results_folder(self, key: tuple[str, str]) -> Path:
        return self.folder(*key) / "results"

    # ------------------------------------------------------------------- receiving
    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> SeriesState:
        """Write one received instance (fsync'ed, renamed into place) and update the
        series' state; returns it.  Only after this returns may the instance be
        acknowledged."""
        study = check_uid(study_uid, "StudyInstanceUID")
        series = check_uid(series_uid, "SeriesInstanceUID")
        sop = check_uid(sop_uid, "SOPInstanceUID")
        with self._lock:
            folder = self.instances_folder((study, series))
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{sop}.dcm"
            with atomic_file(target, overwrite=True) as tmp:
                tmp.write_bytes(data)
            state = self.load(study, series) or SeriesState(study, series,
                                                            first_received=time.time())
            if state.state in ("processed", "forwarded", "failed"):
                self._discard_results(state)  # (a running job sees the new generation)
            state.state = "received"
            state.instances = sum(1 for p in folder.iterdir() if p.suffix == ".dcm")
            state.generation += 1
            state.last_received = time.time()
            state.attempts = state.forward_attempts = 0
            state.error = ""
            self.save(state)
            return state

    def _discard_results(self, state: SeriesState) -> None:
        shutil.rmtree(self.results_folder(state.key), ignore_errors=True)
        state.results = []
        state.notes = []

    # ------------------------------------------------------------------- states
    def load(self, study_uid: str, series_uid: str) -> SeriesState | None:
        path = self.folder(study_uid, series_uid) / STATE_FILE
        try:
            with open(path, "rb") as fh:
                text = fh.read(STATE_MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from exc
        return SeriesState.from_json(data, path)

    def save(self, state: SeriesState) -> None:
        """Replace ``state.json`` atomically."""
        with self._lock:
            path = self.folder(*state.key) / STATE_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path, overwrite=True) as tmp:
                tmp.write_text(json.dumps(asdict(state), indent=1) + "\n", encoding="utf-8")

    def update(self, key: tuple[str, str], expect_generation: int | None = None,
               **changes: Any) -> SeriesState | None:
        """Load, change and save a state under the lock; None (nothing changed) if the
        series is gone or, with ``expect_generation``, received instances since."""
        with self._lock:
            state = self.load(*key)
            if state is None or expect_generation not in (None, state.generation):
                return None
            for name, value in changes.items():
                setattr(state, name, value)
            self.save(state)
            return state

    def series(self) -> list[SeriesState]:
        """Every series in the spool, oldest first (malformed states are skipped)."""
        found = []
        for path in sorted((self.root / "series").glob(f"*/*/{STATE_FILE}")):
            with contextlib.suppress(InputError):
                state = self.load(path.parent.parent.name, path.parent.name)
                if state is not None:
                    found.append(state)
        return sorted(found, key=lambda s: s.first_received)

    def idle_seconds(self, state: SeriesState, now: float | None = None) -> float:
        return (time.time() if now is None else now) - state.last_received

    # ------------------------------------------------------------------- ends
    def finish_forwarded(self, state: SeriesState, keep: bool) -> bool:
        """After forwarding: mark the series forwarded, then (unless ``keep``) remove its
        folder, instances and results (the node's log keeps the record).  False (nothing
        done) if instances arrived since ``state`` was read."""
        with self._lock:
            done = self.update(state.key, expect_generation=state.generation,
                               state="forwarded", error="", next_try=0.0)
            if done is not None and not keep:
                shutil.rmtree(self.folder(*state.key), ignore_errors=True)
                with contextlib.suppress(OSError):
                    self.folder(*state.key).parent.rmdir()  # the study folder, if now empty
            return done is not None

    def drop(self, state: SeriesState, reason: str) -> Path:
        """Move a series to ``dropped/`` (kept, never deleted); returns its new folder."""
        with self._lock:
            state.state, state.error = "dropped", reason
            self.save(state)
            target = self.root / "dropped" / state.study_uid / state.series_uid
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target = target.with_name(f"{state.series_uid}.{int(time.time())}")
            os.replace(self.folder(*state.key), target)
            with contextlib.suppress(OSError):
                self.folder(*state.key).parent.rmdir()  # the study folder, if now empty
            return target
