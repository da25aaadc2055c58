"""Shared fixtures: a seeded generator per test whose seed is printed (pytest
shows it when the test fails; rerun with MOE_EPLB_SEED=<seed>)."""
import os
import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    default = zlib.crc32(request.node.nodeid.encode())
    seed = int(os.environ.get("MOE_EPLB_SEED", default))
    print("seed=%d (rerun with MOE_EPLB_SEED=%d)" % (seed, seed))
    return np.random.default_rng(seed)


def pytest_sessionfinish(session):
    """With MOE_EPLB_MODULES_LOG=<path>, list the files of every imported
    module there, so scripts/check_deps.sh --files can check that each comes
    from a package scripts/deps.sh installs."""
    import sys

    path = os.environ.get("MOE_EPLB_MODULES_LOG")
    if not path:
        return
    files = set()
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if isinstance(name, str) and os.path.isfile(name):
            files.add(os.path.realpath(name))
    with open(path, "w") as out:
        out.writelines(f + "\n" for f in sorted(files))
