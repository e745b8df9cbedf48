"""The DICOM node against a real Orthanc PACS (no mock): sending, the full round trip
Orthanc → ``ctflow serve`` → Orthanc, and bad input (a non-CT series, a missing slice, an
association aborted mid-series, a peer that is down), restart and SIGTERM.

One Orthanc serves every test of this module (session fixture); without Orthanc the tests
skip with the reason, or fail when CTFLOW_REQUIRE_ORTHANC=1 (CI)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from _dciodvfy import dciodvfy_findings, dciodvfy_required
from _orthanc import free_port, orthanc_fixture

from ctflow import reconstruct
from ctflow.cli import main
from ctflow.io.dicom import read_series, write_series
from ctflow.node.address import Peer
from ctflow.node.job import parse_job
from ctflow.node.server import Node
from ctflow.node.store import dicom_files, send_files
from ctflow.node.worker import WorkerSettings
from ctflow.operators import ParallelBeam2D
from ctflow.phantoms import phantom
from ctflow.simulate import noise_std, simulate_volume
from ctflow.units import mu_to_hu

pytestmark = pytest.mark.usefixtures("one_thread", "ctflow_log_handlers")

SLICES, SIZE, PIXEL_MM, SLICE_MM = 8, 64, 0.7, 2.5
JOB = {"acquisition": {"views": 30, "photons": 1e5, "seed": 4},
       "methods": [{"name": "fbp"}, {"name": "tv", "options": {"iters": 10}}]}
VALIDATE = shutil.which("dciodvfy") is not None or dciodvfy_required()
FAST = {"idle_s": 0.5, "poll_s": 0.1, "backoff_s": 0.2, "drop_s": 3.0}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    yield from orthanc_fixture(tmp_path_factory, free_port())


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """An 8-slice 64² CT series of chest phantoms."""
    hu = np.stack([phantom("chest", SIZE, 10 + k) for k in range(SLICES)])
    folder = tmp_path_factory.mktemp("source") / "series"
    write_series(folder, hu, PIXEL_MM, SLICE_MM, "phantom", 0,
                 series_description="phantom source")
    return folder


def _peer(orthanc) -> Peer:
    return Peer(orthanc.aet, "127.0.0.1", orthanc.dicom_port)


@contextlib.contextmanager
def running_node(orthanc, spool: Path, forward: bool = True, **settings):
    """A node on the port Orthanc's AE table names, forwarding to Orthanc."""
    port = orthanc.modalities["ctflow"][2]
    node = Node(spool, parse_job(JOB), port, host="127.0.0.1",
                forward=_peer(orthanc) if forward else None,
                settings=WorkerSettings(**{**FAST, **settings}))
    node.start()
    try:
        yield node
    finally:
        node.stop()


def _wait(condition, timeout_s: float = 40.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _log(spool: Path) -> str:
    return (spool / "node.log").read_text(encoding="utf-8")


def _echo(port: int) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="CTFLOW")
    ok = assoc.is_established and getattr(assoc.send_c_echo(), "Status", None) == 0
    if assoc.is_established:
        assoc.release()
    return ok


def _study_series(orthanc, study_uid: str) -> list[dict]:
    return orthanc.post("/tools/find", {"Level": "Series", "Expand": True,
                                        "Query": {"StudyInstanceUID": study_uid}})


# --------------------------------------------------------------------------- sending
def test_reconstruct_send_stores_the_series_on_orthanc(orthanc, tmp_path, capsys):
    sino = tmp_path / "sino.h5"
    assert main(["simulate", "--phantom", "chest", "--size", "32", "--slices", "3",
                 "--views", "20", "-o", str(sino)]) == 0
    out = tmp_path / "series"
    assert main(["reconstruct", str(sino), "--method", "fbp", "-o", str(out), "--format",
                 "dicom", "--send", str(_peer(orthanc))]) == 0
    assert f"3 of 3 instance(s) stored on {_peer(orthanc)}" in capsys.readouterr().out
    local = {pydicom.dcmread(p).SOPInstanceUID for p in dicom_files(out)}
    series_uid = pydicom.dcmread(dicom_files(out)[0]).SeriesInstanceUID
    [found] = orthanc.post("/tools/find", {"Level": "Series", "Expand": True,
                                           "Query": {"SeriesInstanceUID": series_uid}})
    stored = {orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
              for i in found["Instances"]}
    assert len(found["Instances"]) == 3 and stored == local
    assert len(dicom_files(out)) == 3  # kept locally


def test_send_to_a_peer_that_is_down_fails_in_one_line_and_keeps_the_files(source, capsys):
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in dicom_files(source)}
    down = f"PACS@127.0.0.1:{free_port()}"
    code = main(["send", str(source), down, "--retries", "1", "--backoff", "0.1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"ctflow send: error: 0 of {SLICES} instance(s) stored on {down}; "
                   f"{SLICES} not stored (first: CT00001.dcm: {down} is not reachable "
                   f"(Connection refused; is the PACS running?)); the files stay in {source}"]
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in dicom_files(source)} \
        == before


# --------------------------------------------------------------------------- round trip
def _direct_fbp(source: Path) -> np.ndarray:
    """The FBP the job should produce, computed here with the public API."""
    vol = read_series(source)
    op = ParallelBeam2D(image_size=SIZE, views=30, pixel_size_mm=PIXEL_MM)
    clean = simulate_volume(vol.hu, op, seed=4)
    sino = simulate_volume(vol.hu, op, photons=1e5, seed=4)
    sigma = noise_std(torch.from_numpy(clean), 1e5)
    images = []
    for k in range(SLICES):  # slice by slice (the node reconstructs in batches)
        y = torch.from_numpy(sino[k])[None, None]
        res = reconstruct(y, op, method="fbp", noise_std=sigma, seed=4 + k)
        images.append(mu_to_hu(res.image.double().numpy()[0, 0]))
    return np.stack(images)


def test_round_trip_orthanc_to_node_and_back(orthanc, source, tmp_path):
    ids = [orthanc.upload(p) for p in dicom_files(source)]
    src = orthanc.get(f"/instances/{ids[0]}/tags?simplify")
    study_uid, source_series = src["StudyInstanceUID"], src["SeriesInstanceUID"]
    series_id = orthanc.get(f"/instances/{ids[0]}/series")["ID"]
    spool = tmp_path / "spool"
    with running_node(orthanc, spool):
        answer = orthanc.post("/modalities/ctflow/store",
                              {"Resources": [series_id], "Synchronous": True})
        assert answer["InstancesCount"] == SLICES and answer["FailedInstancesCount"] == 0

        def arrived():
            derived = [s for s in _study_series(orthanc, study_uid)
                       if s["MainDicomTags"]["SeriesInstanceUID"] != source_series]
            done = len(derived) == 2 and all(len(s["Instances"]) == SLICES for s in derived)
            return derived if done and "forwarded 2 derived series" in _log(spool) else None

        derived = _wait(arrived, what="the derived series on Orthanc")
    by_method = {}
    for series in derived:
        description = series["MainDicomTags"]["SeriesDescription"]
        method = description.split()[1]
        by_method[method] = series
        assert description == f"ctflow {method}{' iters=10' if method == 'tv' else ''} " \
                              "30v parallel 1e+05ph 64px"
    assert sorted(by_method) == ["fbp", "tv"]
    uids = {s["MainDicomTags"]["SeriesInstanceUID"] for s in derived}
    assert len(uids) == 2 and source_series not in uids
    fetched = tmp_path / "fetched"
    for method, series in by_method.items():
        folder = fetched / method
        folder.mkdir(parents=True)
        for i, instance in enumerate(series["Instances"]):
            (folder / f"{i}.dcm").write_bytes(orthanc.instance_file(instance))
        if VALIDATE:  # dciodvfy installed or required (CTFLOW_REQUIRE_DCIODVFY=1)
            findings = [f for p in sorted(folder.iterdir()) for f in dciodvfy_findings(p)]
            assert findings == []
        datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
        assert {ds.StudyInstanceUID for ds in datasets} == {study_uid}
        assert all(ds.ImageType[0] == "DERIVED" for ds in datasets)
        assert len({ds.SOPInstanceUID for ds in datasets}) == SLICES
    got = read_series(fetched / "fbp").hu
    want = _direct_fbp(source)
    assert np.abs(got - want).max() <= 0.5 + 1e-3  # rounding to integer HU only
    assert not (spool / "series" / study_uid / source_series).exists()  # done: removed
    orthanc.delete_all()


# --------------------------------------------------------------------------- bad input
def _mr_file(tmp_path: Path, ct_class: bool) -> Path:
    """An MR image (MR Image Storage, or wrongly under the CT Image Storage class)."""
    hu = phantom("head", 32, 0)[None]
    [path] = write_series(tmp_path / ("mr-ct" if ct_class else "mr"), hu, 1.0, 1.0, "x", 0)
    ds = pydicom.dcmread(path)
    ds.Modality = "MR"
    if not ct_class:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    out = tmp_path / f"{'mr-ct' if ct_class else 'mr'}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def test_non_ct_is_refused_and_logged_and_the_node_keeps_serving(orthanc, tmp_path):
    spool = tmp_path / "spool"
    node_peer = Peer("CTFLOW", "127.0.0.1", orthanc.modalities["ctflow"][2])
    with running_node(orthanc, spool) as node:
        mr = send_files([_mr_file(tmp_path, ct_class=False)], node_peer, "TESTSCU",
                        retries=0)
        assert [r.message for r in mr.results] == [
            f"{node_peer} accepted none of the proposed presentation contexts "
            "(MR Image Storage)"]  # nothing sent
        mislabelled = send_files([_mr_file(tmp_path, ct_class=True)], node_peer, "TESTSCU",
                                 retries=0)
        assert [r.status for r in mislabelled.results] == [0xA900]
        _wait(lambda: "refused SOP class(es): MR Image Storage" in _log(spool),
              what="the refusal log line")
        assert _echo(node.port)
    log = _log(spool)
    assert log.count("refused SOP class(es): MR Image Storage") == 1
    assert log.count("modality MR is not CT") == 1
    assert not any((spool / "series").iterdir())  # nothing spooled


def test_missing_slice_is_logged_kept_and_the_node_keeps_serving(orthanc, tmp_path, source):
    gap = [p for k, p in enumerate(dicom_files(source)) if k != 4]
    spool = tmp_path / "spool"
    node_peer = Peer("CTFLOW", "127.0.0.1", orthanc.modalities["ctflow"][2])
    with running_node(orthanc, spool) as node:
        assert len(send_files(gap, node_peer, "TESTSCU").stored) == SLICES - 1
        _wait(lambda: "job refused the series" in _log(spool), what="the job's refusal")
        assert _echo(node.port)
        [state] = node.spool.series()
    lines = [ln for ln in _log(spool).splitlines() if "job refused" in ln]
    assert len(lines) == 1 and "about 1 slice(s) missing between positions" in lines[0]
    assert state.state == "failed"
    assert len(list(node.spool.instances_folder(state.key).iterdir())) == SLICES - 1


def _send_then_abort(files: list[Path], port: int) -> None:
    """A pynetdicom SCU that stores ``files`` and then aborts the association."""
    from pynetdicom import AE

    ae = AE(ae_title="ABORTER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2",
                             ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", port, ae_title="CTFLOW")
    assert assoc.is_established
    for path in files:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
    assoc.abort()


def test_aborted_transfer_waits_for_the_rest_or_is_dropped(orthanc, tmp_path, source):
    files = dicom_files(source)
    other = tmp_path / "other"
    write_series(other, np.stack([phantom("abdomen", 32, k) for k in range(4)]), 1.0, 2.0,
                 "phantom", 0)
    spool = tmp_path / "spool"
    node_peer = Peer("CTFLOW", "127.0.0.1", orthanc.modalities["ctflow"][2])
    with running_node(orthanc, spool, forward=False) as node:
        _send_then_abort(files[:3], node.port)
        _send_then_abort(dicom_files(other)[:2], node.port)
        _wait(lambda: _log(spool).count("its transfer was interrupted") == 2,
              what="the interrupted-transfer lines")
        assert not list(spool.glob("series/*/*/results/*"))  # nothing processed
        assert len(send_files(files[3:], node_peer, "TESTSCU").stored) == SLICES - 3
        _wait(lambda: "wrote 2 derived series" in _log(spool), what="the completed series")
        _wait(lambda: ": dropped: the rest" in _log(spool), what="the drop")
        assert _echo(node.port)
    states = {s.series_uid: s for s in node.spool.series()}
    assert [s.state for s in states.values()] == ["processed"]
    assert len(list(spool.glob("dropped/*/*/instances/*.dcm"))) == 2  # kept aside
    assert _log(spool).count("ended without a release") == 2


def test_restart_resumes_a_spooled_series(orthanc, tmp_path, source):
    spool = tmp_path / "spool"
    node_peer = Peer("CTFLOW", "127.0.0.1", orthanc.modalities["ctflow"][2])
    with running_node(orthanc, spool, forward=False, idle_s=600.0, drop_s=600.0):
        assert len(send_files(dicom_files(source), node_peer, "TESTSCU").stored) == SLICES
    assert "job started" not in _log(spool)  # stopped before the series was complete
    with running_node(orthanc, spool, forward=False) as node:
        assert "(1 series to resume)" in _log(spool)
        _wait(lambda: "wrote 2 derived series" in _log(spool), what="the resumed job")
        [state] = node.spool.series()
    assert state.state == "processed" and state.results == ["01-fbp", "02-tv"]
    assert len(dicom_files(node.spool.results_folder(state.key))) == 2 * SLICES


def test_serve_answers_echo_and_stops_cleanly_on_sigterm(orthanc, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('[acquisition]\nviews = 30\n[[methods]]\nname = "fbp"\n')
    port = free_port()
    spool = tmp_path / "spool"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ctflow.cli", "serve", "--job", str(job),
                             "--port", str(port), "--host", "127.0.0.1", "--spool",
                             str(spool), "--forward", str(_peer(orthanc))],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait(lambda: _echo(port), timeout_s=60.0, what="the node to answer C-ECHO")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "node CTFLOW stopped" in _log(spool) and "node CTFLOW stopped" in err


def test_forwarding_to_a_peer_that_is_down_is_retried_until_it_is_up(tmp_path, source):
    """Results stay in the spool while the forward peer is down; once a (pynetdicom)
    storage SCP listens there, the retry delivers every instance."""
    from pynetdicom import AE, evt

    port, peer_port = free_port(), free_port()
    spool = tmp_path / "spool"
    node = Node(spool, parse_job(JOB), port, host="127.0.0.1",
                forward=Peer("SINK", "127.0.0.1", peer_port),
                settings=WorkerSettings(**{**FAST, "backoff_s": 0.5}))
    node.start()
    received: list[str] = []
    sink = AE(ae_title="SINK")
    sink.add_supported_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    server = None
    try:
        assert len(send_files(dicom_files(source), Peer("CTFLOW", "127.0.0.1", port),
                              "TESTSCU").stored) == SLICES
        _wait(lambda: "forwarding failed (attempt 1" in _log(spool), what="a failed forward")
        [state] = node.spool.series()
        assert state.state == "processed"
        assert len(dicom_files(node.spool.results_folder(state.key))) == 2 * SLICES

        def store(event):
            received.append(event.request.AffectedSOPInstanceUID)
            return 0x0000

        server = sink.start_server(("127.0.0.1", peer_port), block=False,
                                   evt_handlers=[(evt.EVT_C_STORE, store)])
        _wait(lambda: "forwarded 2 derived series" in _log(spool), what="the retried forward")
    finally:
        node.stop()
        if server is not None:
            server.shutdown()
    assert len(set(received)) == 2 * SLICES
    assert not (spool / "series" / state.study_uid / state.series_uid).exists()
