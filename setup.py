"""Builds and installs the moe_eplb Python package and its extension moe_eplb._C.

    python3 -m venv --system-site-packages .venv
    .venv/bin/pip install --no-build-isolation .

The extension is built against the torch that the installing Python imports
(hence --no-build-isolation): a CppExtension on a CPU-only torch, a
CUDAExtension when torch has CUDA and nvcc is found (MOE_EPLB_CUDA=0 forces
CPU, =1 requires CUDA; TORCH_CUDA_ARCH_LIST picks the GPU architectures,
MAX_JOBS the parallel compile jobs). It compiles the same core sources as the
CMake build (the folders CMakeLists.txt globs) plus the torch adapter in
torch/csrc; nothing is duplicated. Build files go to build-python/.
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))

# Keep in sync with MOE_EPLB_SOURCES in CMakeLists.txt.
CORE_SOURCES = ["src/core/*.cpp", "src/cpu/*.cpp", "src/io/*.cpp", "src/plan/*.cpp"]
CUDA_SOURCES = ["src/cuda/*.cu"]
ADAPTER_SOURCES = ["torch/csrc/*.cpp"]


def sources(patterns):
    found = []
    for pattern in patterns:
        found += glob.glob(os.path.join(ROOT, pattern))
    return sorted(os.path.relpath(path, ROOT) for path in found)


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


def loaded_libstdcxx():
    """The libstdc++ this process loaded with torch, or None (non-Linux).

    Linking exactly that file keeps one libstdc++ in the process even where the
    toolchain defaults to a static libstdc++: a second, static copy inside the
    extension collides with torch's shared one (seen on a GPU image whose g++
    links libstdc++ statically: SIGSEGV formatting the first error message).
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


def torch_include_paths(with_cuda):
    try:  # torch >= 2.6
        return cpp_extension.include_paths(device_type="cuda" if with_cuda else "cpu")
    except TypeError:  # older torch: include_paths(cuda=...)
        return cpp_extension.include_paths(cuda=with_cuda)


def extension():
    with_cuda = use_cuda()
    # torch's headers are not ours to warn about: make them system headers so
    # -Wall -Wextra apply to this project's code only.
    system_includes = []
    for path in torch_include_paths(with_cuda):
        system_includes += ["-isystem", path]
    cxx_flags = ["-O3", "-Wall", "-Wextra"] + system_includes
    if int(torch.__version__.split(".")[0]) < 2:
        # torch 1.x defaults to C++14; the core needs C++17. torch 2.x already
        # picks a recent enough standard (and may need a newer one itself).
        cxx_flags.append("-std=c++17")
    kwargs = dict(
        name="moe_eplb._C",
        sources=sources(CORE_SOURCES + ADAPTER_SOURCES),
        include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "src")],
        extra_compile_args={"cxx": cxx_flags},
    )
    libstdcxx = loaded_libstdcxx()
    if libstdcxx:
        kwargs["extra_link_args"] = [libstdcxx]
    if not with_cuda:
        return cpp_extension.CppExtension(**kwargs)
    kwargs["sources"] += sources(CUDA_SOURCES)
    kwargs["define_macros"] = [("MOE_EPLB_WITH_CUDA", "1")]
    kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-Xcompiler=-Wall,-Wextra"]
    return cpp_extension.CUDAExtension(**kwargs)


setup(
    name="moe_eplb",
    version="0.1.0",
    description="Logical-to-physical MoE expert mapping for EPLB (torch.ops.moe_eplb)",
    packages=["moe_eplb"],
    package_dir={"": "python"},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"build": {"build_base": "build-python"}},
    python_requires=">=3.8",
    zip_safe=False,
)
