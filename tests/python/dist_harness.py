"""Runs a function on several gloo ranks, one process each, for the distributed tests.

    outcomes = run_ranks(check_dispatch, world_size=3, args=(seed,))
    results = expect_all_ok(outcomes)

The harness is the package's own (moe_eplb.distributed._local, which the
online demo and the benchmarks use too): every rank joins a gloo group on
127.0.0.1 with a short timeout, and any process still alive after timeout_s
is killed, so every test ends by itself. Spawning costs a torch import per
rank (a second or two): put many checks in one run rather than one run per check.
"""
from moe_eplb.distributed._local import ERROR, OK, TIMEOUT, run_local_ranks, values_or_raise

__all__ = ["ERROR", "OK", "TIMEOUT", "expect_all_ok", "run_ranks"]

run_ranks = run_local_ranks


def expect_all_ok(outcomes):
    """The ranks' return values; fails the test with every failing rank's traceback."""
    try:
        return values_or_raise(outcomes)
    except RuntimeError as error:
        raise AssertionError(str(error)) from None
