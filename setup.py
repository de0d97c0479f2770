"""Builds fastops._C: the C++ CPU kernels always; the CUDA kernels too when the installed torch
is a CUDA build and nvcc is found (no GPU needed to build them).

Install with `pip install --no-build-isolation .` so the build uses the torch you have.

Switches (environment variables):
  FASTOPS_CPU_ONLY=1        build the CPU kernels only, even with a CUDA toolkit present
  TORCH_CUDA_ARCH_LIST      GPU architectures; default "8.0;9.0+PTX" (sm_80, sm_90, PTX for newer)
  MAX_JOBS=N                parallel compile jobs (honoured by torch's ninja build)
  FASTOPS_DEBUG=1           -O0 -g host code, -G -lineinfo device code, no NDEBUG
  FASTOPS_PTXAS_VERBOSE=1   print ptxas' register / shared-memory / spill report per kernel
  FASTOPS_CPU_NATIVE=1      CPU kernels for this machine's processor only (-march=native, one code
                            path instead of the AVX-512 / AVX2 / baseline clones): a build that runs
                            only where it was built, in a fraction of the compile time
  CUDA_HOME                 the CUDA toolkit; default /usr/local/cuda when it exists
"""

import glob
import os
import platform
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# torch.utils.cpp_extension resolves CUDA_HOME when it is imported. On machines where `nvcc` on
# PATH is a wrapper script (e.g. /usr/local/bin/nvcc), torch would guess CUDA_HOME=/usr/local and
# fail to link cudart, so point it at the real toolkit first.
if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"

# With no GPU visible and no arch list, torch's build cannot pick architectures (it crashes).
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _want_cuda():
    if _flag("FASTOPS_CPU_ONLY"):
        return False, "FASTOPS_CPU_ONLY is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    home = cpp_extension.CUDA_HOME
    if not home or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return False, "no CUDA toolkit (nvcc) found; set CUDA_HOME"
    return True, f"CUDA {torch.version.cuda} torch, toolkit at {home}, arch {os.environ['TORCH_CUDA_ARCH_LIST']}"


def _extension():
    debug = _flag("FASTOPS_DEBUG")
    with_cuda, why = _want_cuda()
    print(f"fastops: building {'CPU + CUDA' if with_cuda else 'CPU-only'} kernels ({why})", file=sys.stderr)

    sources = ["csrc/fastops.cpp", "csrc/autograd.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # Never pass -std: torch picks the standard it was built with (C++17 on 2.11, C++20 on 2.14).
    cxx = ["-fopenmp", "-fdiagnostics-color=always", "-Wno-psabi"]
    if platform.machine() in ("x86_64", "AMD64"):
        cxx.append("-mprefer-vector-width=512")  # let the AVX-512 clones (csrc/cpu/simd.h) use zmm
    if _flag("FASTOPS_CPU_NATIVE"):
        cxx += ["-march=native", "-DFASTOPS_NO_MULTIVERSION"]
    # Python's own CFLAGS carry -g; a release build needs no debug info, and writing it slows the
    # compile of the template-heavy kernel files.
    cxx += ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG", "-g0"]
    nvcc = ["-O0", "-G", "-lineinfo"] if debug else ["-O3", "-DNDEBUG"]
    if _flag("FASTOPS_PTXAS_VERBOSE"):
        nvcc += ["-Xptxas", "-v"]
    # torch's wheel ships its own libgomp.so.1; linking with -fopenmp binds to that same soname.
    link = ["-fopenmp"]

    kwargs = dict(
        name="fastops._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )
    if with_cuda:
        kwargs["sources"] = sources + sorted(glob.glob("csrc/cuda/*.cu"))
        kwargs["extra_compile_args"]["nvcc"] = nvcc
        return cpp_extension.CUDAExtension(**kwargs)
    return cpp_extension.CppExtension(**kwargs)


setup(
    packages=find_packages(include=["fastops", "fastops.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)},
)
