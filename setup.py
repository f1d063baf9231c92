"""Build script: pure Python everywhere; the compiled extension ``fastmtl._C`` where it can build.

``fastmtl._C`` has two parts:

* the CPU part (the K×K solvers, the CPU multi-tensor kernels): needs torch and a C++ compiler;
* the CUDA part (Gram / weighted-sum kernels, the solvers' device kernels): needs a CUDA build of
  torch and nvcc.

With nvcc both parts are built into one CUDAExtension; with a C++ compiler only (no CUDA toolkit,
or a CPU-only torch) the CPU part is built as a CppExtension; with neither the package installs as
pure Python. What was built, and why a part was not, is printed and recorded in
``fastmtl/_build_info.py`` (``python -m fastmtl.info`` shows it). Switches (environment):

* ``FASTMTL_BUILD_CUDA=0``  never build the CUDA part (the CPU part still builds);
* ``FASTMTL_BUILD_CUDA=1``  require the CUDA part: fail loudly if it cannot be built;
* ``FASTMTL_BUILD_EXT=0``   build no extension at all (pure Python);
* unset / ``auto``          build what this machine allows.

``TORCH_CUDA_ARCH_LIST`` selects the GPU architectures (default when no GPU is visible:
``8.0;9.0``); ``MAX_JOBS`` bounds parallel compilation (default: one job per source file, at most
the CPU count). ``CUDA_HOME`` should name the toolkit folder; ``CXX`` the C++ compiler.
Install with ``pip install -e . --no-build-isolation`` so the extension matches the installed torch.

In auto mode a failing compilation does not fail the install: a failed CUDA build falls back to the
CPU part, a failed CPU build to pure Python; the error is printed and recorded (``SKIP_REASON``,
``CPU_SKIP_REASON``).
"""

import glob
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA_MODE = os.environ.get("FASTMTL_BUILD_CUDA", "auto").strip().lower()
EXT_MODE = os.environ.get("FASTMTL_BUILD_EXT", "auto").strip().lower()
OFF = ("0", "false", "no", "off")
ON = ("1", "true", "yes", "on")
DEFAULT_ARCHS = "8.0;9.0"
# The .cpp files of the CUDA part (they include CUDA headers); every other .cpp is the CPU part.
CUDA_BINDINGS = ("ops.cpp", "solver_ops_cuda.cpp")


def _say(msg):
    print(f"[fastmtl setup] {msg}", file=sys.stderr)


def _write_build_info(info):
    path = os.path.join(HERE, "fastmtl", "_build_info.py")
    with open(path, "w") as fh:
        fh.write('"""Written by setup.py at build time."""\n')
        for key, value in info.items():
            fh.write(f"{key} = {value!r}\n")


def _sources():
    """``(cpu_sources, cuda_only_sources)``, relative to this folder."""
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    cpu = [s for s in cpp if os.path.basename(s) not in CUDA_BINDINGS]
    cuda = [s for s in cpp if os.path.basename(s) in CUDA_BINDINGS] + cu
    return cpu, cuda


def _cuda_reason(torch, cpp_extension, info):
    """Why the CUDA part cannot be built here (``None`` when it can); fills the toolkit fields."""
    if CUDA_MODE in OFF:
        return "FASTMTL_BUILD_CUDA=0"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    info["CUDA_VERSION"] = torch.version.cuda
    cuda_home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return "nvcc not found (set CUDA_HOME to the CUDA toolkit folder)"
    info["NVCC"] = nvcc
    return None


def _compiler_reason():
    cxx = os.environ.get("CXX", "c++").split()[0]
    if shutil.which(cxx) is None:
        return f"no C++ compiler found ({cxx!r} is not on PATH; set CXX)"
    return None


def _extensions():
    """``(ext_modules, cmdclass)``, or ``([], {})`` with the reason printed and recorded."""
    info = {"CPU_EXTENSION_BUILT": False, "CUDA_EXTENSION_BUILT": False, "SKIP_REASON": None,
            "CPU_SKIP_REASON": None, "TORCH_VERSION": None, "CUDA_VERSION": None, "ARCH_LIST": None, "NVCC": None}

    def python_only(reason):
        info["CPU_SKIP_REASON"] = reason
        info["SKIP_REASON"] = info["SKIP_REASON"] or reason
        _write_build_info(info)
        if CUDA_MODE in ON:
            raise SystemExit(f"[fastmtl setup] FASTMTL_BUILD_CUDA=1 but the CUDA part cannot be built: {reason}")
        _say(f"installing fastmtl as pure Python: {reason}")
        return [], {}

    if EXT_MODE in OFF:
        return python_only("FASTMTL_BUILD_EXT=0")
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # torch missing: Python-only install
        return python_only(f"torch is not importable at build time ({exc}); install torch first and use "
                           "--no-build-isolation")
    info["TORCH_VERSION"] = torch.__version__
    cpu_sources, cuda_sources = _sources()
    if not cpu_sources:
        return python_only("no sources under csrc/")
    cuda_reason = _cuda_reason(torch, cpp_extension, info)
    info["SKIP_REASON"] = cuda_reason
    if cuda_reason is not None and CUDA_MODE in ON:
        _write_build_info(info)
        raise SystemExit(f"[fastmtl setup] FASTMTL_BUILD_CUDA=1 but the CUDA part cannot be built: {cuda_reason}")
    compiler_reason = _compiler_reason()
    if compiler_reason is not None:
        return python_only(compiler_reason)

    include = [os.path.join(HERE, "csrc")]
    # No -std flag: torch adds the C++ standard its own headers need (C++20 for recent versions).
    cpu_ext = cpp_extension.CppExtension(name="fastmtl._C", sources=cpu_sources, include_dirs=include,
                                         extra_compile_args=["-O3"], py_limited_api=False)
    if cuda_reason is None:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            try:
                visible = torch.cuda.is_available()
            except Exception:
                visible = False
            if not visible:
                os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
                _say(f"no GPU visible: building for TORCH_CUDA_ARCH_LIST={DEFAULT_ARCHS}")
        info["ARCH_LIST"] = os.environ.get("TORCH_CUDA_ARCH_LIST") or "the visible GPUs (detected at build time)"
        ext = cpp_extension.CUDAExtension(
            name="fastmtl._C",
            sources=cpu_sources + cuda_sources,
            include_dirs=include,
            extra_compile_args={"cxx": ["-O3"],
                                # -warn-spills: register spills show up in the build log.
                                "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-warn-spills"]},
            py_limited_api=False,
        )
        info["CPU_EXTENSION_BUILT"] = info["CUDA_EXTENSION_BUILT"] = True
        _say(f"building fastmtl._C (CPU and CUDA parts) for {info['ARCH_LIST']} against torch {torch.__version__} "
             f"(CUDA {torch.version.cuda})")
    else:
        ext = cpu_ext
        info["CPU_EXTENSION_BUILT"] = True
        _say(f"building the CPU part of fastmtl._C only ({cuda_reason})")
    if not os.environ.get("MAX_JOBS"):
        # ninja otherwise starts one job per CPU; nvcc jobs take ~1 GB each and there are few sources.
        os.environ["MAX_JOBS"] = str(max(1, min(len(ext.sources), os.cpu_count() or 1)))
    _write_build_info(info)
    base = cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)

    class BuildExt(base):
        """Auto mode: a failed CUDA build falls back to the CPU part, a failed CPU build to pure Python."""

        def run(self):
            try:
                super().run()
                return
            except Exception as exc:  # CompileError, ninja's RuntimeError, ...
                if CUDA_MODE in ON:
                    raise
                error = f"compilation failed ({type(exc).__name__}: {str(exc).strip()[:300]})"
            if info["CUDA_EXTENSION_BUILT"]:
                info["CUDA_EXTENSION_BUILT"] = False
                info["SKIP_REASON"] = error
                _write_build_info(info)
                _say(f"the CUDA part failed to build; building the CPU part only: {error}")
                self.extensions = [cpu_ext]
                try:
                    super().run()
                    return
                except Exception as exc:
                    error = f"compilation failed ({type(exc).__name__}: {str(exc).strip()[:300]})"
            self.extensions = []
            info["CPU_EXTENSION_BUILT"] = False
            info["CPU_SKIP_REASON"] = error
            info["SKIP_REASON"] = info["SKIP_REASON"] or error
            _write_build_info(info)
            _say(f"fastmtl._C failed to build; installing without it: {error}")

    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
