"""The README's runnable examples run: the distributed one rebalances, and each
engine example calls its adapter the way its engine does (no engine installed)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_online_moe_example_rebalances():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "online_moe.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "output (64, 32)" in result.stdout
    assert "rebalance at step 8: max/mean" in result.stdout, result.stdout


@pytest.mark.parametrize("script, expected", [
    ("vllm_eplb.py", ["rebalance 0: ", "rebalance 2: 0 of 320 slots change",
                      "mapped (512, 6) ids, per-rank max/mean"]),
    ("sglang_eplb.py", ["static dispatch: max/mean", "dynamic dispatch: max/mean"]),
    ("deepseek_eplb.py", ["phy2log (2, 16) log2phy (2, 12, "]),
    ("trtllm_eplb.py", ["ExpertStatistic(counts=(4, 3, 8, 32), layers=[3, 4, 5]",
                        "moe_load_balancer.yaml: 48 slots, layers [3, 4, 5]"]),
    ("vllm_ascend_eplb.py", ["step 0: changed 1", "step 2: changed"]),
])
def test_engine_examples(tmp_path, script, expected):
    args = [sys.executable, os.path.join(ROOT, "examples", "engines", script)]
    if script == "trtllm_eplb.py":
        args.append(str(tmp_path))
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for line in expected:
        assert line in result.stdout, result.stdout
