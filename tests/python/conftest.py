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
    module and every shared library this process mapped there, so
    scripts/check_deps.sh --files can check that each comes from a package
    scripts/deps.sh installs."""
    import sys

    path = os.environ.get("MOE_EPLB_MODULES_LOG")
    if not path:
        return
    names = [getattr(module, "__file__", None) for module in list(sys.modules.values())]
    try:
        with open("/proc/self/maps") as maps:
            names += [line.split()[-1] for line in maps if ".so" in line]
    except OSError:
        pass
    files = set()
    for name in names:
        if isinstance(name, str) and name.startswith("/") and os.path.isfile(name):
            files.add(os.path.realpath(name))
    with open(path, "w") as out:
        out.writelines(f + "\n" for f in sorted(files))
