"""A real Orthanc PACS for the DICOM node tests and the node benchmark.

:class:`Orthanc` writes a temporary configuration (storage and index in a temporary
folder, free loopback HTTP and DICOM ports, an AE table naming ctflow's node, no
authentication, no plugins), starts the server in the foreground, waits until its REST API
answers, and stops it.  REST calls use urllib (no new dependency).

Tests build a module fixture on :func:`orthanc_fixture` (one server for every test of
tests/test_node_pacs.py).  Without Orthanc installed they are skipped with the reason,
unless CTFLOW_REQUIRE_ORTHANC=1 (CI): then they fail.  CTFLOW_ORTHANC=PATH names the
executable.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REQUIRE_ENV = "CTFLOW_REQUIRE_ORTHANC"
PATH_ENV = "CTFLOW_ORTHANC"
INSTALL_HINT = "Orthanc is not installed (Debian package 'orthanc')"
SEARCH = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/sbin/Orthanc",
          "/usr/local/bin/Orthanc")
ORTHANC_AET = "ORTHANC"


def orthanc_executable() -> str | None:
    """$CTFLOW_ORTHANC if set (a path; an unusable one counts as missing), else Orthanc on
    PATH, else in the usual sbin/bin folders (not on a user's PATH)."""
    chosen = os.environ.get(PATH_ENV)
    if chosen is not None:
        return chosen if os.access(chosen, os.X_OK) and os.path.isfile(chosen) else None
    found = shutil.which("Orthanc")
    if found:
        return found
    return next((p for p in SEARCH if os.access(p, os.X_OK)), None)


def orthanc_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") == "1"


def free_port() -> int:
    """A free TCP port on the loopback interface (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """One Orthanc server in ``folder`` whose AE table holds ``modalities``
    (name → (AE title, host, port))."""

    def __init__(self, folder: Path, modalities: dict[str, tuple[str, str, int]]) -> None:
        self.folder = Path(folder)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.aet = ORTHANC_AET
        self.modalities = modalities
        self.process: subprocess.Popen | None = None
        self.config_path = self.folder / "orthanc.json"
        self.log_path = self.folder / "orthanc.log"

    def config(self) -> dict[str, Any]:
        """The configuration written to orthanc.json."""
        storage = str(self.folder / "storage")
        return {
            "Name": "ctflow-test", "StorageDirectory": storage, "IndexDirectory": storage,
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": self.aet,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "Plugins": [],
            "DicomModalities": {name: list(v) for name, v in self.modalities.items()},
            "SaveJobs": False, "HttpDescribeErrors": True, "DicomScuTimeout": 30,
        }

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        exe = orthanc_executable()
        if exe is None:
            raise RuntimeError(INSTALL_HINT)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=1), encoding="utf-8")
        with open(self.log_path, "wb") as logfile:
            self.process = subprocess.Popen([exe, str(self.config_path)], stdout=logfile,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {self.process.returncode}; "
                                   f"log: {self.log_path}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s:g} s; log: "
                           f"{self.log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    # ---------------------------------------------------------------------------- REST
    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json", timeout_s: float = 120.0) -> bytes:
        """The raw answer of one REST call (HTTPError for 4xx/5xx answers)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body,
                                     method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=timeout_s) as answer:
            return answer.read()

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post(self, path: str, payload: Any, timeout_s: float = 120.0) -> Any:
        text = self.request("POST", path, json.dumps(payload).encode(), timeout_s=timeout_s)
        return json.loads(text) if text.strip() else None

    def upload(self, path: Path) -> str:
        """POST one DICOM file to /instances; returns Orthanc's instance id."""
        answer = json.loads(self.request("POST", "/instances", Path(path).read_bytes(),
                                         "application/dicom"))
        return str(answer["ID"])

    def delete_all(self) -> None:
        """Remove every patient (between tests that count series)."""
        for patient in self.get("/patients"):
            self.request("DELETE", f"/patients/{patient}")

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Orthanc's series records of the study with this StudyInstanceUID."""
        ids = self.post("/tools/find", {"Level": "Study", "Query":
                                        {"StudyInstanceUID": study_uid}})
        out = []
        for study in ids:
            for series in self.get(f"/studies/{study}/series"):
                out.append(series)
        return out

    def instance_file(self, instance_id: str) -> bytes:
        return self.request("GET", f"/instances/{instance_id}/file")


def _skip_or_fail(reason: str) -> None:
    import pytest

    if orthanc_required():
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires it")
    pytest.skip(f"{reason} (set {REQUIRE_ENV}=1 to fail instead of skipping)")


def orthanc_fixture(tmp_path_factory, node_port: int):
    """Start one Orthanc whose AE table names the node ``CTFLOW`` at ``node_port``
    (generator for a session fixture)."""
    if orthanc_executable() is None:
        _skip_or_fail(INSTALL_HINT)
    server = Orthanc(tmp_path_factory.mktemp("orthanc"),
                     {"ctflow": ("CTFLOW", "127.0.0.1", node_port)})
    server.start()
    try:
        yield server
    finally:
        server.stop()
