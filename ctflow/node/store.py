"""C-STORE SCU: send DICOM files to a peer (a PACS, another node) with pynetdicom.

* Presentation contexts are negotiated from the files themselves: one context per SOP
  class and transfer syntax found; files in an uncompressed syntax propose Explicit and
  Implicit VR Little Endian too (pynetdicom converts between them), compressed files
  propose their own syntax only (nothing is recompressed).
* Each instance gets a status: stored (0x0000, or a warning 0xB000/0xB006/0xB007), refused
  (any other status: not retried, except 0xA7xx "out of resources"), or not sent (no
  accepted context, association refused, peer down or aborting).  Instances not stored
  for a transient reason are sent again on a new association, up to ``retries`` times,
  waiting ``backoff_s``·2^k between attempts.
* Nothing is deleted or modified locally; the caller decides what to do with the report.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..errors import InputError, NetworkError
from ..io.atomic import one_line
from .address import Peer, check_ae_title

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = logging.getLogger("ctflow.node.store")

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


@dataclass
class Instance:
    """One file to send, with the header values that choose its presentation context."""

    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str


@dataclass
class InstanceResult:
    """What happened to one instance: stored or not, the peer's status, why."""

    instance: Instance
    stored: bool = False
    status: int | None = None
    message: str = "not sent"


@dataclass
class SendReport:
    """Per-instance results of :func:`send_files` and the number of associations used."""

    peer: Peer
    results: list[InstanceResult] = field(default_factory=list)
    associations: int = 0

    @property
    def stored(self) -> list[InstanceResult]:
        return [r for r in self.results if r.stored]

    @property
    def failed(self) -> list[InstanceResult]:
        return [r for r in self.results if not r.stored]

    def summary(self) -> str:
        """One line: counts, and the first failure's reason."""
        text = f"{len(self.stored)} of {len(self.results)} instance(s) stored on {self.peer}"
        if self.failed:
            first = self.failed[0]
            text += f"; {len(self.failed)} not stored (first: {first.instance.path.name}: " \
                    f"{first.message})"
        return text

    def raise_for_failures(self) -> None:
        """NetworkError with :meth:`summary` if any instance was not stored."""
        if self.failed:
            raise NetworkError(self.summary())


def dicom_files(folder: str | os.PathLike[str]) -> list[Path]:
    """DICOM files (``DICM`` at byte 128) under ``folder``, recursively, sorted; hidden
    files and folders (e.g. ctflow's series marker) are skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{folder}: not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or not path.is_file():
                continue
            with open(path, "rb") as fh:
                head = fh.read(132)
            if len(head) == 132 and head[128:] == b"DICM":
                found.append(path)
    return found


def read_instance(path: Path) -> Instance:
    """The SOP class, SOP instance and transfer syntax of a DICOM file (header only)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta = ds.file_meta
        sop_class = str(meta.get("MediaStorageSOPClassUID") or ds.SOPClassUID)
        sop_instance = str(meta.get("MediaStorageSOPInstanceUID") or ds.SOPInstanceUID)
        syntax = str(meta.TransferSyntaxUID)
    except Exception as exc:
        raise InputError(f"{path}: not a sendable DICOM file ({one_line(exc)})") from exc
    return Instance(path, sop_class, sop_instance, syntax)


def proposed_contexts(instances: Iterable[Instance]) -> list[tuple[str, list[str]]]:
    """(SOP class, transfer syntaxes) pairs to propose, in first-seen order."""
    contexts: dict[tuple[str, str], list[str]] = {}
    for item in instances:
        uncompressed = item.transfer_syntax in UNCOMPRESSED
        key = (item.sop_class, "uncompressed" if uncompressed else item.transfer_syntax)
        if key not in contexts:
            contexts[key] = list(UNCOMPRESSED) if uncompressed else [item.transfer_syntax]
    if len(contexts) > MAX_CONTEXTS:
        raise InputError(f"the files need {len(contexts)} presentation contexts; DICOM "
                         f"allows {MAX_CONTEXTS} per association (send them in parts)")
    return [(sop, syntaxes) for (sop, _), syntaxes in contexts.items()]


def send_files(paths: Iterable[str | os.PathLike[str]], peer: Peer,
               calling_ae: str = "CTFLOW", retries: int = 2, backoff_s: float = 1.0,
               timeout_s: float = 30.0, progress: Callable[[int], None] | None = None,
               stop: threading.Event | None = None) -> SendReport:
    """Send every file to ``peer`` by C-STORE; returns the per-instance report.

    ``progress(n)`` is called with the number of instances just finished; ``stop`` set
    ends the work after the instance in flight (the rest stay "not sent").
    """
    calling_ae = check_ae_title(calling_ae, "calling AE title")
    instances = [read_instance(Path(p)) for p in paths]
    report = SendReport(peer, [InstanceResult(item) for item in instances])
    contexts = proposed_contexts(instances)
    for attempt in range(max(0, int(retries)) + 1):
        pending = [r for r in report.results if _retryable(r)]
        if not pending or (stop is not None and stop.is_set()):
            break
        if attempt:
            wait = backoff_s * 2 ** (attempt - 1)
            log.debug("%s: %d instance(s) not stored yet; retry %d of %d in %.1f s", peer,
                     len(pending), attempt, retries, wait)
            if stop is not None and stop.wait(wait):
                break
            if stop is None:
                time.sleep(wait)
        report.associations += 1
        _one_association(pending, peer, calling_ae, contexts, timeout_s, progress, stop)
    return report


def _retryable(result: InstanceResult) -> bool:
    """Not stored for a transient reason: never sent, or the peer was out of resources."""
    if result.stored:
        return False
    return result.status is None or (result.status >> 8) == 0xA7


def _one_association(pending: list[InstanceResult], peer: Peer, calling_ae: str,
                     contexts: list[tuple[str, list[str]]], timeout_s: float,
                     progress: Callable[[int], None] | None,
                     stop: threading.Event | None) -> None:
    """Open one association, send the pending instances, release it."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        reason = _association_failure(assoc, peer, timeout_s)
        for result in pending:
            result.message = reason
        log.debug("%s", reason)
        return
    try:
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for result in pending:
            if stop is not None and stop.is_set():
                result.message = "not sent (stopped)"
                continue
            if not assoc.is_established:
                result.message = f"{peer} closed the association"
                continue
            _send_one(assoc, result, accepted, peer)
            if progress is not None and not _retryable(result):
                progress(1)  # finished: stored, or refused for good
    finally:
        if assoc.is_established:
            assoc.release()


def _send_one(assoc: Association, result: InstanceResult, accepted: set[tuple[str, str]],
              peer: Peer) -> None:
    """C-STORE one instance and record its status."""
    item = result.instance
    syntaxes = list(UNCOMPRESSED) if item.transfer_syntax in UNCOMPRESSED \
        else [item.transfer_syntax]
    if not any((item.sop_class, ts) in accepted for ts in syntaxes):
        result.status = 0x0122  # SOP class not supported (not retried: negotiation decided)
        result.message = (f"{peer} accepted no presentation context for "
                          f"{UID(item.sop_class).name} in {UID(item.transfer_syntax).name}")
        return
    try:
        ds = pydicom.dcmread(item.path)
        if not ds.get("SOPClassUID"):  # some archives blank it; the file meta holds it
            ds.SOPClassUID = item.sop_class
        if not ds.get("SOPInstanceUID"):
            ds.SOPInstanceUID = item.sop_instance
        status = assoc.send_c_store(ds)
    except Exception as exc:  # the file changed since it was read, or pynetdicom failed
        result.message = f"not sent ({one_line(exc)})"
        return
    code = getattr(status, "Status", None)
    if code is None:
        result.message = f"no response from {peer} (association aborted or timed out)"
        return
    result.status = int(code)
    result.stored = int(code) in STORED_STATUSES
    result.message = "stored" if result.stored else \
        f"refused by {peer} with status 0x{int(code):04X}"


def _unreachable(peer: Peer, timeout_s: float) -> str | None:
    """Why a TCP connection to the peer fails (refused, timed out, unknown host), or None."""
    import socket

    try:
        with socket.create_connection((peer.host, peer.port), timeout=timeout_s):
            return None
    except socket.gaierror as exc:
        return f"{peer}: unknown host {peer.host!r} ({one_line(exc)})"
    except TimeoutError:
        return f"{peer} is not reachable (no answer within {timeout_s:g} s)"
    except OSError as exc:
        return f"{peer} is not reachable ({exc.strerror or one_line(exc)}; is the PACS " \
               "running?)"


def _association_failure(assoc: Association, peer: Peer, timeout_s: float) -> str:
    """One line saying why an association was not established.  pynetdicom reports a
    connection that failed as an abort; when the peer never answered, a TCP probe tells
    the two apart."""
    if assoc.is_rejected:
        return f"{peer} refused the association (is {peer.ae_title!r} its AE title, and " \
               "does it know this node's AE title?)"
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        refused = sorted({str(UID(cx.abstract_syntax).name) for cx in assoc.rejected_contexts})
        return f"{peer} accepted none of the proposed presentation contexts " \
               f"({', '.join(refused)})"
    unreachable = _unreachable(peer, timeout_s)
    if unreachable is not None:
        return unreachable
    return f"{peer} aborted the association (it does not accept this node?)"
