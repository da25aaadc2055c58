"""bench/gpu_check.sh's distributed stage (bench_migration.py --device-check)
runs on a lent GPU only; its CPU form runs the same checks here (CUDA graphs
aside), so the script a GPU session runs is known to work."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_device_check_passes_on_the_cpu():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "bench_migration.py"), "--device-check",
         "cpu", "--steps", "12"], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith("FAIL")], result.stdout
    passed = [line for line in lines if line.startswith("PASS")]
    assert len(passed) == 8, result.stdout
    assert any("capacity-mode forward eagerly on cpu equals the dense model" in line
               for line in passed)
