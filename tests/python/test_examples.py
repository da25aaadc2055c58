"""The README's runnable distributed example runs and rebalances."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_online_moe_example_rebalances():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "online_moe.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "output (64, 32)" in result.stdout
    assert "rebalance at step 8: max/mean" in result.stdout, result.stdout
