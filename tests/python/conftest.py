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
