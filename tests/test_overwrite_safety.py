"""``--overwrite`` replaces only what ctflow wrote: never an input of the command or a
folder holding one, never a folder without ctflow's series marker, never a FIFO, socket or
symbolic link.  Each refusal is one line, exit code 2, and every file stays in place."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

import ctflow.commands.reconstruct
from ctflow.cli import main
from ctflow.errors import OutputError
from ctflow.io.atomic import atomic_file, check_output
from ctflow.io.dicom import read_series, write_series

SERIES_MARKER = ".ctflow-series"  # the marker file of a series folder ctflow wrote


@pytest.fixture(scope="module")
def sino(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sino") / "x.h5"
    assert main(["simulate", "--size", "16", "--views", "8", "-o", str(path)]) == 0
    return path


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder`` (relative name → bytes, or its kind)."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = "link:" + os.readlink(p)
        elif p.is_fifo():
            out[key] = "fifo"
        elif p.is_socket():
            out[key] = "socket"
        elif p.is_dir():
            out[key] = "dir"
        else:
            out[key] = p.read_bytes()
    return out


def refused(capsys, argv: list[str], *words: str) -> str:
    """Run the CLI; assert exit 2 and one error line holding ``words``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ctflow {argv[0]}: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_output_folder_holding_the_input_is_never_replaced(sino, tmp_path, monkeypatch,
                                                           capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "x.h5").write_bytes(sino.read_bytes())
    (work / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    monkeypatch.chdir(work)
    refused(capsys, ["reconstruct", "x.h5", "--method", "fbp", "-o", ".", "--format",
                     "dicom", "--overwrite"], "contains an input", "x.h5")
    refused(capsys, ["reconstruct", str(work / "x.h5"), "--method", "fbp", "-o", str(work),
                     "--format", "dicom", "--overwrite"], str(work), "contains an input")
    refused(capsys, ["reconstruct", "x.h5", "--method", "fbp", "-o", "x.h5", "--overwrite"],
            "x.h5: is an input")
    assert snapshot(tmp_path) == before


def test_marked_series_holding_the_input_is_not_replaced(sino, tmp_path, capsys):
    series = tmp_path / "series"
    write_series(series, np.zeros((1, 16, 16)), 1.0, 1.0, "fbp", 8)
    (series / "x.h5").write_bytes(sino.read_bytes())  # the user keeps the input there
    before = snapshot(tmp_path)
    refused(capsys, ["reconstruct", str(series / "x.h5"), "--method", "fbp", "-o",
                     str(series), "--format", "dicom", "--overwrite"], "contains an input")
    assert snapshot(tmp_path) == before


def test_fifo_socket_and_link_targets_are_refused(sino, tmp_path, capsys):
    fifo = tmp_path / "o.npy"
    os.mkfifo(fifo)
    refused(capsys, ["reconstruct", str(sino), "--method", "fbp", "-o", str(fifo),
                     "--overwrite"], str(fifo), "FIFO")
    assert fifo.is_fifo()
    kept = tmp_path / "kept.npy"
    kept.write_bytes(b"keep")
    link = tmp_path / "link.npy"
    link.symlink_to(kept)
    refused(capsys, ["reconstruct", str(sino), "--method", "fbp", "-o", str(link),
                     "--overwrite"], "symbolic link")
    assert link.is_symlink() and kept.read_bytes() == b"keep"
    sock_path = tmp_path / "s.npy"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(OutputError, match="is a socket"):
            check_output(sock_path, overwrite=True)
        with pytest.raises(OutputError, match="is a FIFO"), atomic_file(fifo, True) as tmp:
            tmp.write_bytes(b"x")
        assert sock_path.is_socket()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.npy", "link.npy", "o.npy",
                                                          "s.npy"]


def test_unmarked_folder_refused_marked_series_replaced(sino, tmp_path, capsys):
    plain = tmp_path / "plain"
    write_series(plain, np.zeros((1, 16, 16)), 1.0, 1.0, "fbp", 8)
    (plain / SERIES_MARKER).unlink()  # the same files, not marked: someone else's folder
    before = snapshot(plain)
    refused(capsys, ["reconstruct", str(sino), "--method", "fbp", "-o", str(plain),
                     "--format", "dicom", "--overwrite"], str(plain), SERIES_MARKER)
    assert snapshot(plain) == before

    series = tmp_path / "series"
    write_series(series, np.zeros((3, 16, 16)), 1.0, 1.0, "fbp", 8)
    marker = json.loads((series / SERIES_MARKER).read_text())
    assert marker["written_by"] == "ctflow"
    assert marker["files"] == ["CT00001.dcm", "CT00002.dcm", "CT00003.dcm"]
    assert main(["reconstruct", str(sino), "--method", "fbp", "-o", str(series), "--format",
                 "dicom", "--overwrite"]) == 0
    assert read_series(series).hu.shape == (1, 16, 16)  # the marker is not read as a slice
    assert sorted(p.name for p in series.iterdir()) == [SERIES_MARKER, "CT00001.dcm"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "series"]  # no temps

    (series / "report.txt").write_text("added by hand")  # not in the marker's list
    before = snapshot(series)
    refused(capsys, ["reconstruct", str(sino), "--method", "fbp", "-o", str(series),
                     "--format", "dicom", "--overwrite"], "report.txt", "did not write")
    (series / SERIES_MARKER).write_text('{"written_by": "someone"}')
    with pytest.raises(OutputError, match="not written by ctflow"):
        write_series(series, np.zeros((1, 16, 16)), 1.0, 1.0, "fbp", 8, overwrite=True)
    before[SERIES_MARKER] = b'{"written_by": "someone"}'
    assert snapshot(series) == before


def test_file_output_into_a_folder_is_refused_before_the_work(sino, tmp_path, capsys,
                                                              monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the reconstruction ran before the output was checked")

    monkeypatch.setattr(ctflow.commands.reconstruct, "reconstruct_slices", no_work)
    series = tmp_path / "series"
    write_series(series, np.zeros((1, 16, 16)), 1.0, 1.0, "fbp", 8)
    refused(capsys, ["reconstruct", str(sino), "--method", "fbp", "-o", str(series),
                     "--format", "npy", "--overwrite"], "is a folder")
    target = tmp_path / "o.npy"
    target.write_bytes(b"old")
    refused(capsys, ["reconstruct", str(sino), "--method", "fbp", "-o", str(target),
                     "--format", "dicom", "--overwrite"], "not a folder")
    assert target.read_bytes() == b"old"
    monkeypatch.undo()
    assert main(["reconstruct", str(sino), "--method", "fbp", "-o", str(target),
                 "--overwrite"]) == 0  # a regular file is replaced
    assert np.load(target).shape == (1, 16, 16)
