"""The node's worker: watches the spool, runs the job on complete series, forwards results.

One action per :meth:`Worker.step` (so new arrivals are seen between two jobs):

* a ``received`` series idle for ``idle_s`` (no instance for that long, no association
  still sending it) becomes ``complete`` and the job runs on it; if the association that
  sent it ended without a release (``interrupted``) it waits instead, and is moved to
  ``dropped/`` after ``drop_s`` of silence;
* a job that refuses the data (InputError: not CT, a missing slice, ...) leaves the series
  ``failed`` in the spool, with one log line; any other failure is retried
  ``max_attempts`` times with exponential back-off, then ``failed``;
* ``processed`` results are forwarded; a failed forwarding is retried with back-off
  (capped at ``MAX_FORWARD_WAIT_S``) for as long as the node runs: nothing is lost.

Every state change goes through :class:`ctflow.node.spool.Spool`, so a restarted node
continues with what the previous one left.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..io.atomic import one_line
from .address import Peer
from .job import JobRunner, Parked
from .spool import SeriesState, Spool

log = logging.getLogger("ctflow.node")
MAX_FORWARD_WAIT_S = 300.0


@dataclass
class WorkerSettings:
    idle_s: float = 10.0
    drop_s: float = 3600.0
    max_attempts: int = 3
    backoff_s: float = 5.0
    keep: bool = False
    calling_ae: str = "CTFLOW"
    poll_s: float = 0.5


class Worker:
    """Processes the spool's series one at a time in its own thread."""

    def __init__(self, spool: Spool, runner: JobRunner, forward: Peer | None,
                 settings: WorkerSettings, busy: Callable[[], set[tuple[str, str]]]) -> None:
        self.spool, self.runner, self.forward = spool, runner, forward
        self.settings = settings
        self.busy = busy  # series that an open association is still sending
        self.stop_event = threading.Event()
        self._waiting: set[tuple[str, str, int]] = set()  # interrupted series already logged
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ctflow-node-worker",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Ask the worker to stop (a running job parks between slices) and wait for it."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                acted = self.step()
            except Exception as exc:  # never let the worker die: log and go on
                log.error("worker: unexpected failure (%s: %s); continuing",
                          type(exc).__name__, one_line(exc))
                acted = False
            if not acted:
                self.stop_event.wait(self.settings.poll_s)

    # ----------------------------------------------------------------- decisions
    def step(self, now: float | None = None) -> bool:
        """Take the next due action on one series; False if nothing was due."""
        now = time.time() if now is None else now
        busy = self.busy()
        for state in self.spool.series():
            if self.stop_event.is_set():
                return False
            if state.key in busy:
                continue
            if state.state == "received" and self._received_due(state, now):
                state = self.spool.update(state.key, expect_generation=state.generation,
                                          state="complete", next_try=0.0)
                if state is not None:
                    self.run_job(state)
                    return True
            elif state.state == "complete" and now >= state.next_try:
                self.run_job(state)
                return True
            elif state.state == "processed" and self.forward is not None \
                    and now >= state.next_try:
                self.forward_results(state)
                return True
        return False

    def _received_due(self, state: SeriesState, now: float) -> bool:
        """Idle long enough to process; interrupted series wait, then are dropped."""
        idle = now - state.last_received
        if not state.interrupted:
            return idle >= self.settings.idle_s
        if idle >= self.settings.drop_s:
            where = self.spool.drop(state, f"transfer interrupted, no instance for {idle:.0f} s")
            log.warning("series %s: dropped: the rest of its interrupted transfer did not "
                        "come within %.0f s (%d instance(s) kept in %s)", state.series_uid,
                        idle, state.instances, where)
        elif idle >= self.settings.idle_s and (*state.key, state.generation) not in self._waiting:
            self._waiting.add((*state.key, state.generation))
            log.warning("series %s: its transfer was interrupted after %d instance(s); not "
                        "processed until the rest arrives (dropped after %.0f s)",
                        state.series_uid, state.instances, self.settings.drop_s)
        return False

    # ----------------------------------------------------------------- job
    def run_job(self, state: SeriesState) -> None:
        """Run the job on a complete series and record the outcome."""
        from ..io.dicom import read_series

        key, name = state.key, f"series {state.series_uid}"
        log.info("%s: job started (%d instance(s), attempt %d)", name, state.instances,
                 state.attempts + 1)
        start = time.perf_counter()
        results_dir = self.spool.results_folder(key)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                vol = read_series(self.spool.instances_folder(key))
                results_dir.mkdir(parents=True, exist_ok=True)
                derived = self.runner.run(
                    vol, name, lambda i, m: results_dir / f"{i + 1:02d}-{m}",
                    should_stop=self.stop_event.is_set, log=log.info)
            for w in caught:
                log.info("%s: note: %s", name, one_line(w.message))
        except Parked as exc:
            log.info("%s: job parked (%s) because the node is stopping; it runs again on "
                     "restart", name, exc)
            return
        except InputError as exc:
            self.spool.update(key, expect_generation=state.generation, state="failed",
                              error=one_line(exc))
            log.error("%s: job refused the series: %s (kept in %s)", name, one_line(exc),
                      self.spool.folder(*key))
            return
        except Exception as exc:
            self._job_failed(state, exc)
            return
        done = self.spool.update(key, expect_generation=state.generation, state="processed",
                                 results=[d.folder.name for d in derived], attempts=0,
                                 next_try=0.0, error="", notes=[n for d in derived
                                                                for n in d.notes])
        if done is None:
            log.info("%s: new instances arrived during the job; it runs again", name)
            return
        log.info("%s: wrote %d derived series (%s) in %.1f s", name, len(derived),
                 "; ".join(d.description for d in derived), time.perf_counter() - start)
        if self.forward is not None and not self.stop_event.is_set():
            self.forward_results(done)

    def _job_failed(self, state: SeriesState, exc: Exception) -> None:
        attempts = state.attempts + 1
        reason = f"{type(exc).__name__}: {one_line(exc)}"
        if attempts >= self.settings.max_attempts:
            self.spool.update(state.key, expect_generation=state.generation, state="failed",
                              attempts=attempts, error=reason)
            log.error("series %s: job failed %d time(s), giving up (%s); series kept in %s",
                      state.series_uid, attempts, reason, self.spool.folder(*state.key))
            return
        wait = self.settings.backoff_s * 2 ** (attempts - 1)
        self.spool.update(state.key, expect_generation=state.generation, state="complete",
                          attempts=attempts, error=reason, next_try=time.time() + wait)
        log.warning("series %s: job failed (attempt %d of %d: %s); retry in %.0f s",
                    state.series_uid, attempts, self.settings.max_attempts, reason, wait)

    # ----------------------------------------------------------------- forwarding
    def forward_results(self, state: SeriesState) -> None:
        """Store every derived series of ``state`` on the forward peer."""
        from .store import dicom_files, send_files

        assert self.forward is not None
        files: list[Path] = []
        for folder in state.results:
            files += dicom_files(self.spool.results_folder(state.key) / folder)
        report = send_files(files, self.forward, self.settings.calling_ae, retries=0,
                            stop=self.stop_event)
        if report.failed:
            attempts = state.forward_attempts + 1
            wait = min(self.settings.backoff_s * 2 ** (attempts - 1), MAX_FORWARD_WAIT_S)
            self.spool.update(state.key, expect_generation=state.generation,
                              forward_attempts=attempts, error=report.summary(),
                              next_try=time.time() + wait)
            log.warning("series %s: forwarding failed (attempt %d: %s); retry in %.0f s",
                        state.series_uid, attempts, report.summary(), wait)
            return
        if self.spool.finish_forwarded(state, self.settings.keep):
            log.info("series %s: forwarded %d derived series (%d instances) to %s",
                     state.series_uid, len(state.results), len(files), self.forward)
