"""Fixtures shared by several test modules; a module opts in with
``pytestmark = pytest.mark.usefixtures("one_thread")`` (or ``"private_cache"``).

Every test session writes its caches (ctflow's system matrices and SVD factors,
matplotlib's font cache, anything else that follows XDG_CACHE_HOME) to a temporary folder
of its own, never under the user's home (``isolated_home_caches``, autouse).

Hypothesis runs derandomized: the same examples on every run and machine, so a red test
is reproducible and CI does not fail at random.  Explore new examples with
``CTFLOW_HYPOTHESIS=explore python3 -m pytest`` and pin what they find with ``@example``."""

import logging
import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ctflow", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("explore" if os.environ.get("CTFLOW_HYPOTHESIS") == "explore"
                      else "ctflow")


# Environment variables that would otherwise point writes under $HOME.
CACHE_VARIABLES = ("CTFLOW_CACHE_DIR", "MPLCONFIGDIR", "XDG_CACHE_HOME")


@pytest.fixture(scope="session", autouse=True)
def isolated_home_caches(tmp_path_factory):
    """Point CTFLOW_CACHE_DIR, MPLCONFIGDIR and XDG_CACHE_HOME at folders of this session's
    temporary directory (inherited by the CLI subprocesses); restore them afterwards."""
    old = {name: os.environ.get(name) for name in CACHE_VARIABLES}
    root = tmp_path_factory.mktemp("session-caches")
    for name in CACHE_VARIABLES:
        os.environ[name] = str(root / name.lower())
    yield root
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: tiny tensors and small sparse products only add
    synchronisation waits when a second intra-op thread shares 2 busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory, one_thread):
    """A private ctflow cache folder (CTFLOW_CACHE_DIR) for the module, on one thread."""
    old = os.environ.get("CTFLOW_CACHE_DIR")
    os.environ["CTFLOW_CACHE_DIR"] = str(tmp_path_factory.mktemp("ctcache"))
    yield
    if old is None:
        os.environ.pop("CTFLOW_CACHE_DIR", None)
    else:
        os.environ["CTFLOW_CACHE_DIR"] = old


@pytest.fixture
def ctflow_log_handlers():
    """Remove the stderr handler ``ctflow.cli.main`` adds to the ctflow logger: it holds
    the test's captured stderr, closed once the test ends."""
    logger = logging.getLogger("ctflow")
    before = list(logger.handlers)
    yield
    for handler in logger.handlers[:]:
        if handler not in before:
            logger.removeHandler(handler)
