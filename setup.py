"""Build script: pure Python everywhere; the CUDA extension ``fastmtl._C`` only where it can build.

The extension is built when torch is a CUDA build and nvcc is found. Switches (environment):

* ``FASTMTL_BUILD_CUDA=0``  never build it;
* ``FASTMTL_BUILD_CUDA=1``  require it: fail loudly if it cannot be built;
* unset / ``auto``          build it when possible, otherwise print why not and install Python only.

``TORCH_CUDA_ARCH_LIST`` selects the GPU architectures (default when no GPU is visible:
``8.0;9.0``); ``MAX_JOBS`` bounds parallel compilation (default: one job per source file, at most
the CPU count). ``CUDA_HOME`` should name the toolkit folder.
Install with ``pip install -e . --no-build-isolation`` so the extension matches the installed torch.

In auto mode a failing compilation does not fail the install either: the error is printed, recorded
in ``fastmtl/_build_info.py`` (``SKIP_REASON``) and the package installs without the extension.
"""

import glob
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
MODE = os.environ.get("FASTMTL_BUILD_CUDA", "auto").strip().lower()
DEFAULT_ARCHS = "8.0;9.0"


def _say(msg):
    print(f"[fastmtl setup] {msg}", file=sys.stderr)


def _write_build_info(info):
    path = os.path.join(HERE, "fastmtl", "_build_info.py")
    with open(path, "w") as fh:
        fh.write('"""Written by setup.py at build time."""\n')
        for key, value in info.items():
            fh.write(f"{key} = {value!r}\n")


def _cuda_extension():
    """``(ext_modules, cmdclass)`` for the extension, or ``([], {})`` with the reason printed."""
    info = {"CUDA_EXTENSION_BUILT": False, "SKIP_REASON": None, "TORCH_VERSION": None,
            "CUDA_VERSION": None, "ARCH_LIST": None, "NVCC": None}
    if MODE in ("0", "false", "no", "off"):
        info["SKIP_REASON"] = "FASTMTL_BUILD_CUDA=0"
        _write_build_info(info)
        _say("skipping the CUDA extension: FASTMTL_BUILD_CUDA=0")
        return [], {}
    reason = None
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # torch missing: Python-only install
        torch = None
        reason = f"torch is not importable at build time ({exc}); install torch first and use --no-build-isolation"
    if reason is None:
        info["TORCH_VERSION"] = torch.__version__
        if torch.version.cuda is None:
            reason = f"torch {torch.__version__} is not a CUDA build"
        else:
            info["CUDA_VERSION"] = torch.version.cuda
            cuda_home = cpp_extension.CUDA_HOME
            nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
            if not nvcc or not os.path.exists(nvcc):
                reason = "nvcc not found (set CUDA_HOME to the CUDA toolkit folder)"
            else:
                info["NVCC"] = nvcc
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    if reason is None and not sources:
        reason = "no sources under csrc/"
    if reason is not None:
        info["SKIP_REASON"] = reason
        _write_build_info(info)
        if MODE in ("1", "true", "yes", "on"):
            raise SystemExit(f"[fastmtl setup] FASTMTL_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
        _say(f"skipping the CUDA extension: {reason}")
        return [], {}

    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        visible = False
        try:
            visible = torch.cuda.is_available()
        except Exception:
            visible = False
        if not visible:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
            _say(f"no GPU visible: building for TORCH_CUDA_ARCH_LIST={DEFAULT_ARCHS}")
    info["ARCH_LIST"] = os.environ.get("TORCH_CUDA_ARCH_LIST") or "the visible GPUs (detected at build time)"
    if not os.environ.get("MAX_JOBS"):
        # ninja otherwise starts one job per CPU; nvcc jobs take ~1 GB each and there are few sources.
        os.environ["MAX_JOBS"] = str(max(1, min(len(sources), os.cpu_count() or 1)))
    info["CUDA_EXTENSION_BUILT"] = True
    _write_build_info(info)
    _say(f"building fastmtl._C for {info['ARCH_LIST']} against torch {torch.__version__} (CUDA {torch.version.cuda}), "
         f"MAX_JOBS={os.environ['MAX_JOBS']}")
    ext = cpp_extension.CUDAExtension(
        name="fastmtl._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        # No -std flag: torch adds the C++ standard its own headers need (C++20 for recent versions).
        extra_compile_args={"cxx": ["-O3"],
                            # -warn-spills: register spills show up in the build log.
                            "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-warn-spills"]},
        py_limited_api=False,
    )
    base = cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)

    class BuildExt(base):
        """In auto mode, a failing compilation installs the Python package without the extension."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # CompileError, ninja's RuntimeError, ...
                if MODE in ("1", "true", "yes", "on"):
                    raise
                self.extensions = []
                info["CUDA_EXTENSION_BUILT"] = False
                info["SKIP_REASON"] = f"compilation failed ({type(exc).__name__}: {str(exc).strip()[:300]})"
                _write_build_info(info)
                _say(f"the CUDA extension failed to build; installing without it: {info['SKIP_REASON']}")

    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = _cuda_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
