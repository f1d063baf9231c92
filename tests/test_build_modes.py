"""setup.py's build modes, run for real on a copy of the sources in a temporary folder.

* no nvcc (``CUDA_HOME`` pointing nowhere, nvcc off ``PATH``): the CPU part of ``fastmtl._C``
  (solvers, CPU multi-tensor kernels) is built, loads and solves;
* no C++ compiler, or ``FASTMTL_BUILD_EXT=0``: pure Python, with the reason recorded;
* ``FASTMTL_BUILD_CUDA=1`` without nvcc: the build fails loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy_sources(dst) -> str:
    """setup.py, pyproject.toml, README.md, csrc/ and the Python package, without any build output."""
    dst = str(dst / "src")
    os.makedirs(dst)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), dst)
    shutil.copytree(os.path.join(ROOT, "csrc"), os.path.join(dst, "csrc"))
    shutil.copytree(os.path.join(ROOT, "fastmtl"), os.path.join(dst, "fastmtl"),
                    ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "_build_info.py", "__pycache__", "bench_out"))
    return dst


def _env_without_nvcc(**extra) -> dict:
    env = dict(os.environ)
    env.pop("CUDA_PATH", None)
    env.pop("FASTMTL_BUILD_CUDA", None)
    env.pop("FASTMTL_BUILD_EXT", None)
    env["CUDA_HOME"] = "/nonexistent/cuda"
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not os.path.exists(os.path.join(p, "nvcc")))
    env["MAX_JOBS"] = env.get("MAX_JOBS", "2")
    env.update(extra)
    return env


def _setup(src, env, timeout=900):
    return subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _build_info(src) -> dict:
    values: dict = {}
    with open(os.path.join(src, "fastmtl", "_build_info.py")) as fh:
        exec(fh.read(), values)
    return {k: v for k, v in values.items() if k.isupper()}


def _compiled_parts(src) -> list:
    return [f for f in os.listdir(os.path.join(src, "fastmtl")) if f.startswith("_C") and f.endswith(".so")]


@pytest.mark.slow
def test_without_nvcc_the_cpu_part_builds_loads_and_solves(tmp_path):
    if shutil.which(os.environ.get("CXX", "c++").split()[0]) is None:
        pytest.skip("no C++ compiler on PATH: toolchain missing")
    src = _copy_sources(tmp_path)
    env = _env_without_nvcc()
    res = _setup(src, env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "building the CPU part of fastmtl._C only" in res.stderr
    info = _build_info(src)
    assert info["CPU_EXTENSION_BUILT"] and not info["CUDA_EXTENSION_BUILT"], info
    assert "nvcc not found" in info["SKIP_REASON"] or "not a CUDA build" in info["SKIP_REASON"], info
    assert _compiled_parts(src)
    check = (
        "import torch, fastmtl\n"
        "from fastmtl.solvers import compiled, min_norm\n"
        "assert fastmtl.__file__.startswith(%r), fastmtl.__file__\n"
        "assert compiled.unavailable_reason('cpu') is None, compiled.unavailable_reason('cpu')\n"
        "assert compiled.unavailable_reason('cuda') is not None\n"
        "J = torch.randn(5, 30, dtype=torch.float64); G = J @ J.T\n"
        "torch.testing.assert_close(fastmtl.solvers.min_norm_simplex(G), min_norm.min_norm_simplex(G))\n"
        "g = [[torch.randn(7), torch.randn(3, 4)] for _ in range(3)]\n"
        "assert fastmtl.ops.get_backend('cpu').unavailable_reason() is None\n"
        "torch.testing.assert_close(fastmtl.gramian(g, backend='cpu'), fastmtl.gramian(g, backend='reference'))\n"
        "gen = lambda: torch.Generator().manual_seed(0)\n"
        "d, info = fastmtl.combine(g, method='graddrop', generator=gen(), return_info=True)\n"
        "ref = fastmtl.combine(g, method='graddrop', generator=gen(), backend='reference')\n"
        "assert info.backend == 'cpu' and all(torch.equal(a, b) for a, b in zip(d, ref)), info.backend\n"
        "print('solved')\n" % src)
    run_env = dict(env, PYTHONPATH=src)
    out = subprocess.run([sys.executable, "-c", check], cwd=src, env=run_env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "solved" in out.stdout, out.stderr[-3000:]
    out = subprocess.run([sys.executable, "-m", "fastmtl.info"], cwd=src, env=run_env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    cpu = text.index("CPU part")
    cuda = text.index("CUDA part")
    assert "built:    yes" in text[cpu:cuda] and "loaded:   yes" in text[cpu:cuda], text
    assert "built:    no (" in text[cuda:], text


def test_without_a_compiler_installs_pure_python_and_says_why(tmp_path):
    src = _copy_sources(tmp_path)
    res = _setup(src, _env_without_nvcc(CXX="/nonexistent/bin/c++"), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "installing fastmtl as pure Python: no C++ compiler found" in res.stderr
    info = _build_info(src)
    assert not info["CPU_EXTENSION_BUILT"] and not info["CUDA_EXTENSION_BUILT"]
    assert "no C++ compiler" in info["CPU_SKIP_REASON"]
    assert not _compiled_parts(src)


def test_extension_switched_off_installs_pure_python(tmp_path):
    src = _copy_sources(tmp_path)
    res = _setup(src, _env_without_nvcc(FASTMTL_BUILD_EXT="0"), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    info = _build_info(src)
    assert not info["CPU_EXTENSION_BUILT"] and info["CPU_SKIP_REASON"] == "FASTMTL_BUILD_EXT=0"
    assert not _compiled_parts(src)


def test_required_cuda_part_without_nvcc_fails_loudly(tmp_path):
    src = _copy_sources(tmp_path)
    res = _setup(src, _env_without_nvcc(FASTMTL_BUILD_CUDA="1"), timeout=300)
    assert res.returncode != 0
    assert "FASTMTL_BUILD_CUDA=1 but the CUDA part cannot be built" in res.stderr + res.stdout
    assert not _compiled_parts(src)
