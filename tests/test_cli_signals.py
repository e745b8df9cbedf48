"""The CLI's one failure path: any exception is one line (``--debug`` shows the traceback),
SIGTERM stops a command like Ctrl-C (temporaries removed, one true line, exit 143), stale
temporaries of a killed writer are removed by the next write, and start-up does not
import torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import ctflow.commands.info
import ctflow.commands.reconstruct
from ctflow import cli
from ctflow.cli import main

# Runs the CLI with a writer that, once its temporary output is on disk, prints WRITING to
# stderr and waits: the test then signals it while the temporary exists.
SLOW_WRITER = textwrap.dedent("""\
    import sys, time
    import PIL.Image, pydicom.dataset
    def stalled(original):
        def write(self, *args, **kwargs):
            original(self, *args, **kwargs)
            print("WRITING", file=sys.stderr, flush=True)
            time.sleep(120)
        return write
    PIL.Image.Image.save = stalled(PIL.Image.Image.save)
    pydicom.dataset.Dataset.save_as = stalled(pydicom.dataset.Dataset.save_as)
    from ctflow.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def sino(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sino") / "x.h5"
    assert main(["simulate", "--size", "16", "--views", "8", "-o", str(path)]) == 0
    return path


@pytest.fixture()
def work(sino, tmp_path) -> Path:
    """A folder holding only a copy of the sinogram x.h5."""
    (tmp_path / "x.h5").write_bytes(sino.read_bytes())
    return tmp_path


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler installed (Linux /proc)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


@pytest.fixture()
def start():
    """``start(argv, folder, script=None)``: run the CLI (or ``script`` with ``argv``) in a
    subprocess; whatever is still running at the end of the test is killed."""
    procs: list[subprocess.Popen] = []

    def run(argv: list[str], folder: Path, script: str | None = None) -> subprocess.Popen:
        cmd = [sys.executable, "-c", script, *argv] if script else \
            [sys.executable, "-m", "ctflow.cli", *argv]
        procs.append(subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}))
        return procs[-1]

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def wait_for(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the command")
        time.sleep(0.05)


def wait_for_line(proc: subprocess.Popen, text: str) -> None:
    line = proc.stderr.readline()  # blocks until the writer reports (or exits)
    assert text in line, line + proc.stderr.read()


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


@needs_proc
@pytest.mark.parametrize("signum, code, delay", [(signal.SIGTERM, 143, 1.0),
                                                 (signal.SIGINT, 130, 0.0)])
def test_signal_during_a_slow_reconstruction(work, start, signum, code, delay):
    proc = start(["reconstruct", "x.h5", "--method", "tv", "--iters", "10000000", "-o",
                  "o.npy"], work)
    wait_for(proc, lambda: catches_sigterm(proc.pid))  # main has started
    time.sleep(delay)  # 0: during the imports (torch, solvers); 1 s: usually the iterations
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    name = signal.Signals(signum).name
    assert one_line(err) == f"ctflow reconstruct: interrupted ({name}); nothing was written"
    assert listing(work) == ["x.h5"]


@pytest.mark.parametrize("out, extra", [("o.png", []), ("series", ["--format", "dicom"])])
def test_sigterm_while_writing_leaves_no_temporary(work, start, out, extra):
    proc = start(["reconstruct", "x.h5", "--method", "fbp", "-o", out, *extra], work,
                 SLOW_WRITER)
    wait_for_line(proc, "WRITING")
    assert any(name.startswith(f".{out}.") for name in listing(work))  # the temporary
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert one_line(err) == "ctflow reconstruct: interrupted (SIGTERM); nothing was written"
    assert listing(work) == ["x.h5"]


@pytest.mark.parametrize("out, extra", [("o.png", []), ("series", ["--format", "dicom"])])
def test_stale_temporary_of_a_killed_writer_is_cleaned(work, start, out, extra):
    proc = start(["reconstruct", "x.h5", "--method", "fbp", "-o", out, *extra], work,
                 SLOW_WRITER)
    wait_for_line(proc, "WRITING")
    proc.kill()  # SIGKILL: nothing can clean up
    proc.communicate(timeout=60)
    stale = [n for n in listing(work) if n.startswith(f".{out}.")]
    assert len(stale) == 1 and str(proc.pid) in stale[0]  # the writer's pid is in the name
    live = start(["reconstruct", "x.h5", "--method", "fbp", "-o", out, "--overwrite",
                  *extra], work, SLOW_WRITER)  # a writer still at work keeps its temporary
    wait_for_line(live, "WRITING")
    assert main(["reconstruct", str(work / "x.h5"), "--method", "fbp", "-o",
                 str(work / out), *extra]) == 0
    kept = [n for n in listing(work) if n.startswith(f".{out}.")]
    live.kill()
    live.communicate(timeout=60)
    assert len(kept) == 1 and str(live.pid) in kept[0]
    os.utime(work / kept[0], (time.time() - 3 * 86400,) * 2)  # and old ones go whoever wrote
    assert main(["reconstruct", str(work / "x.h5"), "--method", "fbp", "-o",
                 str(work / out), "--overwrite", *extra]) == 0
    assert listing(work) == sorted([out, "x.h5"])


def test_interrupt_after_the_output_is_in_place_says_so(work, monkeypatch, capsys):
    write = ctflow.commands.reconstruct.write_output

    def write_then_interrupt(*args, **kwargs):
        write(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ctflow.commands.reconstruct, "write_output", write_then_interrupt)
    out = work / "o.npy"
    assert main(["reconstruct", str(work / "x.h5"), "--method", "fbp", "-o", str(out)]) == 130
    assert one_line(capsys.readouterr().err) == \
        f"ctflow reconstruct: interrupted (SIGINT) after writing {out}"
    assert np.load(out).shape == (1, 16, 16)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ctflow.commands.reconstruct, "write_output", interrupt)
    assert main(["reconstruct", str(work / "x.h5"), "--method", "fbp", "-o",
                 str(work / "p.npy")]) == 130
    assert one_line(capsys.readouterr().err) == \
        "ctflow reconstruct: interrupted (SIGINT); nothing was written"
    assert listing(work) == ["o.npy", "x.h5"]


def test_interrupt_while_building_the_parser(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)  # e.g. Ctrl-C during imports
    try:
        code = main(["info", "x.h5"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main")
    assert code == 130
    assert one_line(capsys.readouterr().err) == \
        "ctflow info: interrupted (SIGINT); nothing was written"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interruption_turned_into_an_error_still_interrupts(monkeypatch, capsys, signum,
                                                                code):
    """numpy's import turns a KeyboardInterrupt into an ImportError (seen under load: 5 of
    12 Ctrl-C during start-up ended as 'error', exit 1): the CLI remembers the signal."""
    def converted(args):
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises here
        except KeyboardInterrupt as exc:
            raise ImportError("numpy failed to import") from exc
        return 0

    monkeypatch.setattr(ctflow.commands.info, "run", converted)
    assert main(["info", "x.h5"]) == code
    name = signal.Signals(signum).name
    assert one_line(capsys.readouterr().err) == \
        f"ctflow info: interrupted ({name}); nothing was written"
    monkeypatch.undo()
    assert main(["info", "no-such-file.h5"]) == 2  # the next call starts afresh
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("error, code, words", [
    (RuntimeError("boom\n  in a second line"), 1,
     ["unexpected failure (RuntimeError: boom in a second line)", "--debug"]),
    (MemoryError(), 1, ["out of memory"]),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                  "1099511627776 bytes"), 1, ["out of memory", "1099511627776 bytes"]),
    (KeyError("geometry"), 1, ["unexpected failure (KeyError: 'geometry')"]),
    (ValueError("bad value"), 2, ["ctflow info: error: bad value"]),
])
def test_any_exception_is_one_line(monkeypatch, capsys, error, code, words):
    def fail(args):
        raise error

    monkeypatch.setattr(ctflow.commands.info, "run", fail)
    assert main(["info", "x.h5"]) == code
    line = one_line(capsys.readouterr().err)
    assert line.startswith("ctflow info: error: ")
    for word in words:
        assert word in line, line
    assert main(["--debug", "info", "x.h5"]) == code
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in fail" in err
    assert err.strip().splitlines()[-1] == line


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_start_up_does_not_import_torch():
    out = run_python(textwrap.dedent("""\
        import contextlib, io, json, sys
        import ctflow.cli
        seen = {"import": "torch" in sys.modules}
        ctflow.cli.build_parser()
        seen["parser"] = "torch" in sys.modules
        for command in ("reconstruct", "simulate", "info", "bench"):
            ctflow.cli.build_parser(command)
            seen[command] = "torch" in sys.modules or "ctflow.api" in sys.modules
        with contextlib.redirect_stdout(io.StringIO()) as text:
            try:
                ctflow.cli.main(["--help"])
            except SystemExit as exc:
                assert exc.code == 0
        assert "usage: ctflow" in text.getvalue() and "reconstruct" in text.getvalue()
        seen["help"] = "torch" in sys.modules or "ctflow.api" in sys.modules
        print(json.dumps(seen))
    """))
    assert json.loads(out) == {"import": False, "parser": False, "reconstruct": False,
                               "simulate": False, "info": False, "bench": False,
                               "help": False}


def test_public_api_still_there():
    out = run_python(textwrap.dedent("""\
        import ctflow
        from ctflow.simulate import noise_std      # the submodule of the same name
        import ctflow.api, ctflow.phantoms
        from ctflow.commands.simulate import PHANTOM_KINDS
        assert ctflow.reconstruct is ctflow.api.reconstruct
        assert ctflow.load_prior is ctflow.api.load_prior
        assert ctflow.Reconstruction is ctflow.api.Reconstruction
        assert callable(ctflow.simulate) and ctflow.simulate.__name__ == "simulate"
        assert PHANTOM_KINDS == ctflow.phantoms.KINDS
        print(sorted(set(ctflow.__all__) - set(dir(ctflow))))
    """))
    assert out.strip() == "[]"
