"""The online half of scripts/demo.sh (python -m moe_eplb.distributed.demo):
it serves inside torch.inference_mode(), in bfloat16 where the CPU computes
it, checks every token against a dense reference, and reports only the
tables it installed."""
import os
import re
import subprocess
import sys

import torch

from moe_eplb.distributed import demo


def test_online_demo_serves_in_inference_mode_and_reports_what_it_installed(tmp_path):
    svg = tmp_path / "online.svg"
    result = subprocess.run(
        [sys.executable, "-m", "moe_eplb.distributed.demo", "--steps", "26", "--svg", str(svg)],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    dtype = demo.resolve_dtype("auto")
    assert ", %s, inside torch.inference_mode()" % dtype in out.splitlines()[0], out
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("rebalance at")]
    assert len(lines) == 3, out  # steps 8, 16 and 24
    installed = 0
    for line in lines:
        # Each layer named is one whose table switched; nothing is predicted
        # for a layer that kept its table.
        assert re.fullmatch(r"rebalance at step \d+: (no table changes \(the tables in force "
                            r"stay\)|planned layers \[[\d, ]+\]; the run ended before they "
                            r"switched|installed (layer \d \d\.\d{3} -> \d\.\d{3} \(\d+ experts, "
                            r"\d+ bytes\)(; )?)+ \(predicted max/mean on the last window\))",
                            line), line
        installed += line.count("layer ") if "installed" in line else 0
    assert re.search(r"\d+ rebalances \(\d+ installed new tables\), %d layer tables installed"
                     % installed, out), out
    assert "matches the dense float64 reference (within %g of its norm, for %s): yes" % (
        demo.TOLERANCE[dtype], dtype) in out, out
    assert svg.read_text().startswith("<svg")


def test_the_demo_check_tells_a_wrong_expert_from_rounding():
    # The tolerance that lets bfloat16 rounding through stops a token that
    # reached another expert: the check can fail.
    dense = demo.dense_layers(1, 6, 8, 4, seed=3)[0]
    hidden = torch.randn(32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = demo.dense_moe(hidden, *dense, 2)
    rounded = expected.to(torch.bfloat16)
    assert demo.outputs_match(rounded, expected, "bfloat16")
    wrong = demo.dense_moe(hidden, dense[0], *(w[[1, 0, 2, 3, 4, 5]] for w in dense[1:]), 2)
    assert not demo.outputs_match(wrong, expected, "bfloat16")
    assert not demo.outputs_match(rounded, expected, "float64")
