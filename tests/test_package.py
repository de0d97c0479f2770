"""The package around the kernels: what was built, import without the extension, backend choice."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastops
from fastops import _backend


def _run_python(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, timeout=300
    )


def test_extension_is_built_with_cuda_kernels_when_torch_has_cuda():
    assert fastops.has_extension()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastops::hardswish", "CPU")
    if torch.version.cuda is None or os.environ.get("FASTOPS_CPU_ONLY"):
        pytest.skip("a CPU-only torch (or FASTOPS_CPU_ONLY build) has no CUDA kernels to build")
    assert fastops.has_cuda_kernels()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastops::hardswish", "CUDA")


def test_import_without_extension_warns_once_and_runs_the_reference():
    result = _run_python(
        """
        import sys, warnings
        sys.modules["fastops._C"] = None   # makes `from fastops import _C` raise ImportError
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fastops
            import fastops.ops, fastops.nn
        ours = [w for w in caught if "fastops" in str(w.message)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        assert "reference" in str(ours[0].message)
        assert not fastops.has_extension() and not fastops.has_cuda_kernels()
        import torch, torch.nn.functional as F
        x = torch.randn(3, 5, 7, 9) * 4
        assert torch.equal(fastops.ops.hardswish(x), F.hardswish(x))
        assert torch.equal(fastops.nn.Hardsigmoid()(x), F.hardsigmoid(x))
        y = x.clone(); fastops.ops.hardswish(y, inplace=True); assert torch.equal(y, F.hardswish(x))
        try:
            fastops.ops.hardswish(torch.arange(3))
        except TypeError as e:
            assert "fastops.hardswish: argument 'x'" in str(e)
        else:
            raise AssertionError("integer input accepted")
        print("OK")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("OK")


def test_backend_setting():
    assert fastops.get_backend() == "auto"
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        fastops.set_backend("cudnn")
    assert fastops.get_backend() == "auto"
    # no GPU-verified record yet: "auto" means Triton for every op (design.md §2)
    assert _backend.resolve("hardswish") == "triton"
    if fastops.has_cuda_kernels():
        with fastops.use_backend("cuda"):
            assert fastops.get_backend() == "cuda" and _backend.resolve("hardswish") == "cuda"
        assert fastops.get_backend() == "auto"
    if _backend.triton_available():
        fastops.set_backend("TRITON")
        try:
            assert fastops.get_backend() == "triton"
        finally:
            fastops.set_backend("auto")


def test_auto_never_picks_an_unverified_cuda_kernel(monkeypatch):
    monkeypatch.setattr(_backend, "AUTO_PREFERS_CUDA", {"hardswish": True})
    expected = "cuda" if fastops.has_cuda_kernels() else "triton"
    assert _backend.resolve("hardswish") == expected
    assert _backend.resolve("hardsigmoid") == "triton"


def test_backend_from_environment():
    ok = _run_python("import fastops; print(fastops.get_backend())", FASTOPS_BACKEND="triton")
    assert ok.returncode == 0 and ok.stdout.strip() == "triton", ok.stderr
    bad = _run_python("import fastops", FASTOPS_BACKEND="tensorrt")
    assert bad.returncode != 0 and "FASTOPS_BACKEND='tensorrt' is not a fastops backend" in bad.stderr


def test_triton_is_imported_lazily():
    result = _run_python("import sys, fastops; print('fastops.triton' in sys.modules)")
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr
