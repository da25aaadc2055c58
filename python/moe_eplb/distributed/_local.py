"""Runs a function on several gloo ranks of this machine, one process each:
the harness of the online demo, the benchmarks and the multi-process tests.

    outcomes = run_local_ranks(fn, world_size=3, args=(seed,))
    # [(OK, value) | (ERROR, (type name, message, traceback)) | (TIMEOUT, None)] by rank

`fn(rank, world_size, *args)` must be a module-level function (the processes
are spawned, so it is pickled by name). Every rank joins a gloo group on
127.0.0.1 with a short timeout, so a peer that dies makes the others fail
instead of hang, and the harness kills any process still alive after
`timeout_s`: a run always ends by itself.
"""
import datetime
import os
import queue
import socket
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

OK = "ok"
ERROR = "error"
TIMEOUT = "timeout"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank, world_size, port, group_timeout_s, fn, args, results):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank,
            world_size=world_size, timeout=datetime.timedelta(seconds=group_timeout_s))
        results.put((rank, OK, fn(rank, world_size, *args)))
    except BaseException as error:  # reported to the caller, which decides
        results.put((rank, ERROR, (type(error).__name__, str(error), traceback.format_exc())))
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def run_local_ranks(fn, world_size, args=(), timeout_s=60.0, group_timeout_s=10.0):
    """Runs fn on world_size ranks; returns [(status, value)] by rank.

    status is OK (value: fn's return value), ERROR (value: (exception type
    name, message, traceback)) or TIMEOUT (the rank reported nothing within
    timeout_s and was killed).
    """
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=_rank_main,
                        args=(rank, world_size, port, group_timeout_s, fn, args, results),
                        daemon=True)
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    outcomes = [(TIMEOUT, None)] * world_size
    pending = set(range(world_size))
    deadline = time.monotonic() + timeout_s
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            rank, status, value = results.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            if all(not process.is_alive() for process in processes) and results.empty():
                break  # a rank died without reporting (e.g. killed): no more results
            continue
        outcomes[rank] = (status, value)
        pending.discard(rank)
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()) if not pending else 0.1)
        if process.is_alive():
            process.kill()
            process.join()
    return outcomes


def values_or_raise(outcomes):
    """The ranks' return values; RuntimeError naming every rank that failed
    (with its traceback) or did not finish."""
    problems = []
    for rank, (status, value) in enumerate(outcomes):
        if status == ERROR:
            problems.append("rank %d raised %s: %s\n%s" % (rank, value[0], value[1], value[2]))
        elif status == TIMEOUT:
            problems.append("rank %d did not finish in time" % rank)
    if problems:
        raise RuntimeError("\n".join(problems))
    return [value for _, value in outcomes]
