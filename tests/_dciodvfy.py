"""dciodvfy (dicom3tools) for the tests that validate written DICOM files.

Mark such a test with ``@requires_dciodvfy``: it is skipped, with the reason, when dciodvfy
is not installed, unless the environment sets CTFLOW_REQUIRE_DCIODVFY=1 (CI does): then it
runs and fails in :func:`dciodvfy_findings` instead of passing unvalidated."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REQUIRE_ENV = "CTFLOW_REQUIRE_DCIODVFY"
INSTALL_HINT = "dciodvfy (dicom3tools) is not installed; apt-get install dicom3tools"
#: A finding: "Error - …" / "Warning - …" at the start of a line, or after the attribute
#: dciodvfy names first, e.g. "(0x0043,0x106d) US Area Size  - Warning - …".
FINDING = re.compile(r"(^|\s)(Error|Warning) - ")


def dciodvfy_required() -> bool:
    """True when the environment demands dciodvfy (CTFLOW_REQUIRE_DCIODVFY=1)."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


requires_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None and not dciodvfy_required(),
    reason=f"{INSTALL_HINT} (set {REQUIRE_ENV}=1 to fail instead of skipping)")


def dciodvfy_findings(path: Path) -> list[str]:
    """Every error and warning line dciodvfy reports for one file (empty: valid), wherever
    on the line dciodvfy puts "Error - " or "Warning - "."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail(f"{INSTALL_HINT}, and {REQUIRE_ENV}=1 requires it")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stderr + out.stdout).splitlines()
    return [f"{Path(path).name}: {line}" for line in lines if FINDING.search(line)]
