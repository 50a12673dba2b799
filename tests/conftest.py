import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("MPLBACKEND", "Agg")
# set before torch starts its OpenMP pool: spinning workers slow a shared CPU several-fold
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Teacher logits cached between runs go to a session folder, not the user's ~/.cache."""
    os.environ["COMPRESS_CACHE_DIR"] = str(tmp_path_factory.mktemp("compress-cache"))
    yield


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny-model tests: on a shared 2-core machine that is
    several times faster than two threads competing with other work."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_sessionfinish(session, exitstatus):
    """The suite fails if anything replaced /dev/null with a regular file (an "atomic" writer once
    renamed a temporary file onto it; as root that breaks apt and every later shell redirect)."""
    import stat

    if not stat.S_ISCHR(os.stat(os.devnull).st_mode):
        print(f"\nERROR: {os.devnull} is no longer a character device after the test session; "
              f"restore it with: rm -f /dev/null && mknod -m 666 /dev/null c 1 3", file=sys.stderr)
        session.exitstatus = 1
