"""Builds and installs the moe_eplb Python package and its extension moe_eplb._C.

    python3 -m venv --system-site-packages .venv
    .venv/bin/pip install --no-build-isolation .

The extension is built by CMake (the project's one build; src/CMakeLists.txt
holds the one list of sources) against the torch that the installing Python
imports, hence --no-build-isolation: CMake finds it with find_package(Torch)
under torch.utils.cmake_prefix_path. CUDA kernels are built when that torch
has CUDA and nvcc is found (MOE_EPLB_CUDA=0 forces CPU, =1 requires CUDA);
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default 8.0;9.0), MAX_JOBS
the parallel compile jobs, CMAKE_ARGS adds CMake options (e.g.
-DMOE_EPLB_WERROR=ON). Build files go to build-python/ (MOE_EPLB_BUILD_DIR
overrides).
"""
import os
import shlex
import shutil
import subprocess

import torch
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.abspath(os.environ.get("MOE_EPLB_BUILD_DIR", os.path.join(ROOT, "build-python")))


def use_cuda():
    choice = os.environ.get("MOE_EPLB_CUDA", "auto").lower()
    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if choice in ("0", "off", "false"):
        return False
    if choice in ("1", "on", "true") and not available:
        raise SystemExit(
            "MOE_EPLB_CUDA=1 but torch %s has no CUDA or nvcc was not found (CUDA_HOME=%s)"
            % (torch.__version__, cpp_extension.CUDA_HOME)
        )
    return available


def cuda_architectures():
    """TORCH_CUDA_ARCH_LIST ("8.0;9.0", "9.0+PTX") as CMAKE_CUDA_ARCHITECTURES ("80;90")."""
    names = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0").replace(" ", ";").split(";")
    return ";".join(name.replace("+PTX", "").replace(".", "") for name in names if name)


def loaded_libstdcxx():
    """The libstdc++ this process loaded with torch, or None (non-Linux).

    Linking exactly that file keeps one libstdc++ in the process even where the
    toolchain defaults to a static libstdc++: a second, static copy inside the
    extension collides with torch's shared one.
    """
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if os.path.basename(path).startswith("libstdc++.so"):
                    return path
    except OSError:
        pass
    return None


class CMakeBuild(build_ext):
    """Configures the project with the extension on and builds its target."""

    def build_extension(self, ext):
        with_cuda = use_cuda()
        args = [
            "cmake", "-S", ROOT, "-B", BUILD_DIR, "-G", "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DCMAKE_PREFIX_PATH=" + torch.utils.cmake_prefix_path,
            "-DMOE_EPLB_BUILD_TORCH=ON",
            "-DMOE_EPLB_BUILD_TESTS=OFF",
            "-DMOE_EPLB_BUILD_TOOLS=OFF",
            "-DMOE_EPLB_BUILD_BENCH=OFF",
            "-DMOE_EPLB_CUDA=" + ("ON" if with_cuda else "OFF"),
        ]
        if with_cuda:
            args += ["-DCMAKE_CUDA_ARCHITECTURES=" + cuda_architectures(),
                     "-DCMAKE_CUDA_COMPILER=" + os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")]
        libstdcxx = loaded_libstdcxx()
        if libstdcxx:
            args.append("-DMOE_EPLB_TORCH_LIBSTDCXX=" + libstdcxx)
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        subprocess.check_call(args)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(
            ["cmake", "--build", BUILD_DIR, "--target", "moe_eplb_torch", "-j", jobs])
        built = os.path.join(BUILD_DIR, "torch", "_C.so")
        destination = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copyfile(built, destination)


setup(
    name="moe_eplb",
    version="0.1.0",
    description="Logical-to-physical MoE expert mapping for EPLB (torch.ops.moe_eplb)",
    packages=["moe_eplb", "moe_eplb.distributed", "moe_eplb.engines"],
    package_dir={"": "python"},
    ext_modules=[Extension("moe_eplb._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.8",
    zip_safe=False,
)
