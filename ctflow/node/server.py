"""The DICOM node: a C-STORE / C-ECHO SCP that spools CT series, with the worker that
runs the job on them and forwards the results (``ctflow serve``).

Accepted: Verification and CT Image Storage in every transfer syntax pynetdicom knows;
other SOP classes are refused at negotiation (their presentation contexts rejected, one
log line per association).  A CT Image Storage instance whose Modality is not CT, or whose
UIDs are not valid, is refused with status 0xA900 / 0xC000 (one log line).  An instance is
acknowledged (0x0000) only once :meth:`Spool.store` has written it to disk; a spool write
failure answers 0xA700 (out of resources), so the sender keeps it.

Associations are tracked: the series an open association is sending are not processed;
when it ends with a release its series are marked whole again, when it ends otherwise
(A-ABORT, lost connection) they are marked ``interrupted`` and wait (see
:mod:`ctflow.node.worker`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, NetworkError
from ..io.atomic import one_line
from .address import Peer, check_ae_title
from .job import JobRunner, JobSpec
from .spool import Spool
from .worker import Worker, WorkerSettings

if TYPE_CHECKING:
    from pynetdicom.events import Event

log = logging.getLogger("ctflow.node")

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STATUS_OK = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_MISMATCH = 0xA900  # data set does not match SOP class
STATUS_CANNOT_UNDERSTAND = 0xC000
REFUSED_NAMES = 4  # refused SOP classes named in a log line
STOP_GRACE_S = 5.0  # on stop, open associations get this long to finish


@dataclass
class _Association:
    """What one open association did: the series it sent, how many instances."""

    peer: str
    series: set[tuple[str, str]] = field(default_factory=set)
    instances: int = 0
    released: bool = False
    refused: list[str] = field(default_factory=list)  # SOP classes refused at negotiation
    refusals: int = 0  # instances refused by the C-STORE handler (each logged there)

    def refused_text(self) -> str:
        names = self.refused[:REFUSED_NAMES]
        more = len(self.refused) - len(names)
        return ", ".join(names) + (f" and {more} more" if more > 0 else "")


class Node:
    """A C-STORE SCP with a spool, a job and an optional forward peer."""

    def __init__(self, spool_dir: str | os.PathLike[str], job: JobSpec, port: int,
                 ae_title: str = "CTFLOW", host: str = "0.0.0.0",
                 forward: Peer | None = None, settings: WorkerSettings | None = None,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        self.ae_title = check_ae_title(ae_title, "--ae-title")
        self.host, self.port = host, int(port)
        self.spool = Spool(spool_dir)
        self.settings = settings or WorkerSettings(calling_ae=self.ae_title)
        self.worker = Worker(self.spool, JobRunner(job), forward, self.settings, self.busy)
        self.log_path = Path(log_path) if log_path is not None else self.spool.root / "node.log"
        self._assocs: dict[int, _Association] = {}
        self._lock = threading.Lock()
        self._server = None
        self._handler: logging.Handler | None = None

    # ----------------------------------------------------------------- life cycle
    def start(self) -> Node:
        """Take the spool, open the log, listen, start the worker."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
        from pynetdicom.sop_class import Verification

        self.spool.acquire()
        self._open_log()
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(Verification)
        ae.add_supported_context(CT_IMAGE_STORAGE, ALL_TRANSFER_SYNTAXES)
        ae.maximum_associations = 16
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_RELEASED, self._on_released),
                    (evt.EVT_CONN_CLOSE, self._on_closed)]
        try:
            self._server = ae.start_server((self.host, self.port), block=False,
                                           evt_handlers=handlers)
        except OSError as exc:
            self.spool.release()
            self._close_log()
            reason = exc.strerror or one_line(exc)
            raise NetworkError(f"cannot listen on {self.host}:{self.port} ({reason})") from exc
        active = ("received", "complete") + (("processed",) if self.worker.forward else ())
        pending = [s for s in self.spool.series() if s.state in active]
        log.info("node %s listening on %s:%d; spool %s (%d series to resume); forward to %s",
                 self.ae_title, self.host, self.port, self.spool.root, len(pending),
                 self.worker.forward or "(none)")
        self.worker.start()
        return self

    def stop(self) -> None:
        """Stop accepting, let the worker finish or park its job, release the spool."""
        if self._server is not None:
            server, self._server = self._server, None
            open_assocs = list(server.active_associations)
            server.shutdown()  # no new association from now on
            deadline = time.monotonic() + STOP_GRACE_S
            for assoc in open_assocs:  # transfers in flight get a moment to finish
                assoc.join(max(0.0, deadline - time.monotonic()))
                if assoc.is_alive():
                    assoc.abort()  # unacknowledged instances stay with their sender
        self.worker.stop()
        log.info("node %s stopped", self.ae_title)
        self.spool.release()
        self._close_log()

    def _open_log(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.FileHandler(self.log_path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger("ctflow.node")
        logger.addHandler(self._handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    def _close_log(self) -> None:
        if self._handler is not None:
            logging.getLogger("ctflow.node").removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def busy(self) -> set[tuple[str, str]]:
        """Series that an open association is still sending."""
        with self._lock:
            return {key for a in self._assocs.values() for key in a.series}

    # ----------------------------------------------------------------- events
    def _record(self, event: Event) -> _Association:
        requestor = event.assoc.requestor
        with self._lock:
            return self._assocs.setdefault(
                id(event.assoc), _Association(f"{requestor.ae_title}@{requestor.address}"))

    def _on_accepted(self, event: Event) -> None:
        record = self._record(event)
        record.refused = sorted({str(cx.abstract_syntax.name)
                                 for cx in event.assoc.rejected_contexts})

    def _on_echo(self, event: Event) -> int:
        return STATUS_OK

    def _on_store(self, event: Event) -> int:
        """Spool one instance; acknowledge only once it is on disk."""
        record = self._record(event)
        try:
            ds = event.dataset
            modality = str(ds.get("Modality", "")).strip()
            sop = event.request.AffectedSOPInstanceUID
            if modality != "CT":
                record.refusals += 1
                _refusal_log(record)("association from %s: refused instance %s: modality %s "
                                     "is not CT", record.peer, sop, modality or "(none)")
                return STATUS_MISMATCH
            state = self.spool.store(ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"),
                                     sop, event.encoded_dataset())
        except InputError as exc:
            record.refusals += 1
            _refusal_log(record)("association from %s: refused an instance: %s", record.peer,
                                 one_line(exc))
            return STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            log.error("spool write failed (%s); instance refused with 0xA700 so the sender "
                      "keeps it", one_line(exc))
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:  # a dataset pydicom cannot parse
            record.refusals += 1
            _refusal_log(record)("association from %s: refused an undecodable instance (%s)",
                                 record.peer, one_line(exc))
            return STATUS_CANNOT_UNDERSTAND
        with self._lock:
            record.series.add(state.key)
            record.instances += 1
        if state.instances == 1:
            log.info("series %s (study %s): receiving from %s", state.series_uid,
                     state.study_uid, record.peer)
        return STATUS_OK

    def _on_released(self, event: Event) -> None:
        self._record(event).released = True

    def _on_closed(self, event: Event) -> None:
        """The association's connection closed: its series are whole or interrupted."""
        with self._lock:
            record = self._assocs.pop(id(event.assoc), None)
        if record is None:
            return
        if not record.series:
            if record.refused and not record.refusals:  # it sent what this node refuses
                log.warning("association from %s stored nothing here; refused SOP class(es): "
                            "%s (this node accepts CT Image Storage and Verification only)",
                            record.peer, record.refused_text())
            return
        for key in record.series:
            self.spool.update(key, interrupted=not record.released)
        if record.released:
            log.info("association from %s released: %d instance(s) of %d series", record.peer,
                     record.instances, len(record.series))
        else:
            log.warning("association from %s ended without a release (aborted or connection "
                        "lost) after %d instance(s); its series wait for the rest",
                        record.peer, record.instances)


def _refusal_log(record: _Association):
    """The first refused instance of an association is a warning, the rest debug lines."""
    return log.warning if record.refusals == 1 else log.debug
