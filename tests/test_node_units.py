"""The DICOM node's parts that need no network: peer addresses, JOB.toml validation, the
spool's states and restart record, the job's checks (missing slices, sizes)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pydicom
import pytest

from ctflow.cli import main
from ctflow.errors import InputError, OutputError
from ctflow.io.dicom import read_series, write_series
from ctflow.node.address import Peer, parse_peer
from ctflow.node.job import JobRunner, check_volume, describe, load_job, parse_job, resample
from ctflow.node.spool import Spool
from ctflow.phantoms import phantom

pytestmark = pytest.mark.usefixtures("one_thread", "ctflow_log_handlers")


@pytest.mark.parametrize("text, peer", [
    ("ORTHANC@127.0.0.1:4242", Peer("ORTHANC", "127.0.0.1", 4242)),
    ("PACS 1@pacs.example.org:104", Peer("PACS 1", "pacs.example.org", 104)),
    ("  CT@host:1", Peer("CT", "host", 1)),
    ("A@[::1]:11112", Peer("A", "::1", 11112)),
    ("A@B@host:65535", Peer("A@B", "host", 65535)),  # '@' is allowed in an AE title
])
def test_parse_peer_accepts_valid_addresses(text, peer):
    assert parse_peer(text) == peer
    assert parse_peer(str(peer)) == peer  # str() gives a parseable address back


@pytest.mark.parametrize("text, fragment", [
    ("ORTHANC:4242", "no '@'"),
    ("@host:4242", "is empty"),
    ("ABCDEFGHIJKLMNOPQ@host:1", "longer than 16"),
    ("A\\B@host:1", "not allowed"),
    ("A@host", "no ':PORT'"),
    ("A@:4242", "empty or invalid host"),
    ("A@host:0", "outside 1–65535"),
    ("A@host:70000", "outside 1–65535"),
    ("A@host:http", "not a number"),
    ("A@::1:4242", "in brackets"),
    ("A@[::1]4242", "[ADDRESS]:PORT"),
])
def test_parse_peer_refuses_bad_addresses_with_one_line(text, fragment):
    with pytest.raises(InputError) as info:
        parse_peer(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def _job(**acq):
    return {"acquisition": {"views": 30, **acq}, "methods": [{"name": "fbp"}]}


@pytest.mark.parametrize("data, fragment", [
    ({"methods": [{"name": "fbp"}]}, "[acquisition] table is missing"),
    ({"acquisition": {}, "methods": [{"name": "fbp"}]}, "acquisition.views is required"),
    (_job(views=0), "acquisition.views must be an integer in 1–4096"),
    (_job(geometry="cone"), "acquisition.geometry 'cone'"),
    (_job(photons=-1), "acquisition.photons must be a positive"),
    (_job(photons=1e5, noise=0.01), "not both"),
    (_job(dose=3), "unknown key acquisition.dose"),
    ({**_job(), "methods": []}, "methods must be a non-empty list"),
    ({**_job(), "methods": [{"name": "magic"}]}, "methods[0].name 'magic'"),
    ({**_job(), "methods": [{"name": "tv", "options": {"itres": 3}}]},
     "methods[0].options.itres: method 'tv' has no such option"),
    ({**_job(), "methods": [{"name": "fbp", "prior": "default"}]}, "uses no prior"),
    ({**_job(), "methods": [{"name": "conjugate", "prior": "no-such-prior"}]},
     "methods[0].prior 'no-such-prior'"),
    ({**_job(), "image_size": 3}, "image_size must be an integer"),
    ({**_job(), "output": {"window": [40, -1]}}, "output.window"),
    ({**_job(), "extra": 1}, "unknown key extra"),
])
def test_job_validation_names_the_key(data, fragment):
    with pytest.raises(InputError) as info:
        parse_job(data, "job.toml")
    assert fragment in str(info.value), str(info.value)
    assert str(info.value).startswith("job.toml: ")


def test_job_file_reads_and_serve_refuses_a_bad_one_in_one_line(tmp_path, capsys):
    good = tmp_path / "job.toml"
    good.write_text('image_size = 32\n[acquisition]\nviews = 20\ngeometry = "fan"\n'
                    'photons = 1e5\nseed = 3\n[[methods]]\nname = "tv"\n'
                    'options = { iters = 5 }\n[output]\nwindow = [0, 1000]\n')
    spec = load_job(good)
    assert (spec.views, spec.geometry, spec.photons, spec.seed, spec.image_size) == \
        (20, "fan", 1e5, 3, 32)
    assert spec.methods[0].name == "tv" and spec.methods[0].options == {"iters": 5}
    assert spec.window == (0.0, 1000.0)
    assert describe(spec, spec.methods[0], 32) == "ctflow tv iters=5 20v fan 1e+05ph 32px"
    bad = tmp_path / "bad.toml"
    bad.write_text("[acquisition\nviews = 1\n")
    spool = tmp_path / "spool"
    assert main(["serve", "--job", str(bad), "--spool", str(spool), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not valid TOML" in err[0]
    assert not spool.exists()  # nothing written


def test_spool_states_are_on_disk_and_survive_a_restart(tmp_path):
    spool = Spool(tmp_path)
    spool.acquire()
    with pytest.raises(OutputError, match="in use by another ctflow node"):
        Spool(tmp_path).acquire()
    first = spool.store("1.2.3", "1.2.3.4", "1.2.3.4.1", b"one")
    second = spool.store("1.2.3", "1.2.3.4", "1.2.3.4.2", b"two")
    again = spool.store("1.2.3", "1.2.3.4", "1.2.3.4.2", b"two")  # a resent instance
    assert (first.instances, second.instances, again.instances) == (1, 2, 2)
    assert again.generation == 3
    files = sorted(p.name for p in spool.instances_folder(("1.2.3", "1.2.3.4")).iterdir())
    assert files == ["1.2.3.4.1.dcm", "1.2.3.4.2.dcm"]
    assert spool.update(("1.2.3", "1.2.3.4"), expect_generation=2, state="complete") is None
    spool.update(("1.2.3", "1.2.3.4"), expect_generation=3, state="processed",
                 results=["01-fbp"])
    spool.release()
    reopened = Spool(tmp_path)  # a restart reads the same state
    reopened.acquire()
    [state] = reopened.series()
    assert (state.state, state.results, state.instances) == ("processed", ["01-fbp"], 2)
    raw = json.loads((reopened.folder("1.2.3", "1.2.3.4") / "state.json").read_text())
    assert raw["state"] == "processed"
    # a new instance sends a processed series back to "received"
    assert reopened.store("1.2.3", "1.2.3.4", "1.2.3.4.3", b"3").state == "received"
    with pytest.raises(InputError, match="invalid SOPInstanceUID"):
        reopened.store("1.2.3", "1.2.3.4", "../../etc/passwd", b"x")
    where = reopened.drop(reopened.series()[0], "test")
    assert sorted(p.name for p in (where / "instances").iterdir()) == \
        ["1.2.3.4.1.dcm", "1.2.3.4.2.dcm", "1.2.3.4.3.dcm"]  # dropped means kept aside
    assert reopened.series() == []
    reopened.release()


def test_job_refuses_a_series_with_a_missing_slice(tmp_path):
    hu = np.stack([phantom("chest", 32, i) for i in range(6)])
    files = write_series(tmp_path / "s", hu, 1.0, 2.0, "phantom", 0)
    whole = read_series(tmp_path / "s")
    check_volume(whole, "whole")  # regular spacing passes
    files[3].unlink()  # slice 4 of 6 missing
    with pytest.warns(UserWarning, match="irregular"):
        gap = read_series(tmp_path / "s")
    with pytest.raises(InputError, match=r"about 1 slice\(s\) missing between positions "
                       r"4\.00 and 8\.00 mm \(spacing 2\.00 mm\)"):
        check_volume(gap, "gap")


def test_job_runs_a_flow_method_at_a_size_its_prior_serves_and_says_so(tmp_path):
    hu = np.stack([phantom("chest", 100, i) for i in range(2)])
    write_series(tmp_path / "s", hu, 0.5, 2.0, "phantom", 0)
    vol = read_series(tmp_path / "s")
    spec = parse_job({"acquisition": {"views": 20}, "methods": [
        {"name": "fbp"}, {"name": "conjugate", "options": {"nfe": 2}},
        {"name": "conjugate", "options": {"nfe": 2}, "prior": "phantom-64"}]})
    lines: list[str] = []
    out = JobRunner(spec).run(vol, "series", lambda i, m: tmp_path / f"{i}-{m}",
                              log=lines.append)
    fbp, flow, fixed = (read_series(d.folder) for d in out)
    # the default prior serves multiples of 8 from 64² up: 100² runs at 96²; phantom-64 at 64²
    assert fbp.hu.shape == (2, 100, 100) and flow.hu.shape == (2, 96, 96)
    assert fixed.hu.shape == (2, 64, 64)
    assert flow.spacing[1] == pytest.approx(0.5 * 100 / 96)  # field of view kept
    assert out[1].description.endswith("96px") and out[1].notes
    assert lines[0].startswith("series: conjugate runs at 96² (the prior 'default' serves "
                               "64²–") and lines[0].endswith("received 100²)")
    assert lines[1] == ("series: conjugate runs at 64² (the prior 'phantom-64' serves 64² "
                        "images; received 100²)")
    # the derived series sit where the received slices were
    np.testing.assert_allclose(flow.positions[:, 2], vol.positions[:, 2])
    small = resample(hu, 48)
    assert small.shape == (2, 48, 48)
    assert abs(float(small.mean()) - float(hu.mean())) < 5.0  # HU level kept


def test_a_failing_job_is_retried_and_never_loses_the_series(tmp_path, caplog):
    from ctflow.node.worker import Worker, WorkerSettings

    hu = np.stack([phantom("chest", 32, k) for k in range(3)])
    files = write_series(tmp_path / "s", hu, 1.0, 2.0, "phantom", 0)
    spool = Spool(tmp_path / "spool")
    for path in files:
        ds = pydicom.dcmread(path)
        spool.store(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                    path.read_bytes())
    [state] = spool.series()
    results = spool.results_folder(state.key)
    results.mkdir()
    results.chmod(0o555)  # read-only: writing the derived series fails (an OutputError)
    spec = parse_job({"acquisition": {"views": 20}, "methods": [{"name": "fbp"}]})
    worker = Worker(spool, JobRunner(spec), None,
                    WorkerSettings(idle_s=0.0, backoff_s=30.0, max_attempts=2), set)
    caplog.set_level(logging.INFO, logger="ctflow.node")
    assert worker.step()
    [state] = spool.series()
    assert (state.state, state.attempts) == ("complete", 1)
    assert "read-only" in state.error
    assert "job failed (attempt 1 of 2" in caplog.text and "retry in 30 s" in caplog.text
    assert not worker.step()  # not before the back-off has passed
    results.chmod(0o755)
    assert worker.step(now=state.next_try + 1.0)
    [state] = spool.series()
    assert (state.state, state.results) == ("processed", ["01-fbp"])
    assert len(list(spool.instances_folder(state.key).iterdir())) == 3
    assert read_series(results / "01-fbp").hu.shape == (3, 32, 32)


def test_reconstruct_send_refuses_a_bad_address_before_any_work(tmp_path, capsys):
    sino = tmp_path / "sino.h5"
    assert main(["simulate", "--phantom", "chest", "--size", "16", "--views", "8",
                 "-o", str(sino)]) == 0
    capsys.readouterr()
    out = tmp_path / "series"
    for extra, message in ((["--format", "dicom", "--send", "PACS@host"], "no ':PORT'"),
                           (["--format", "npy", "--send", "PACS@host:104"],
                            "--send applies to --format dicom only")):
        assert main(["reconstruct", str(sino), "-o", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
        assert not out.exists()
