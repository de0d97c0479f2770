import os
import zlib

# Triton kernels run on CPU tensors only under Triton's interpreter, which is bound when a kernel
# is defined: switch it on before anything imports fastops.triton. On a GPU machine the Triton
# tests run compiled, on CUDA tensors.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# The references run in full float32 on CUDA too: cuDNN's convolutions (and cuBLAS's matmuls, when
# allowed) would otherwise round their inputs to TF32 (10-bit mantissa), 1e-3 off.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(params=[pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)])
def device(request):
    """Each test that takes `device` runs on the CPU kernels and (marked cuda, skipped without a
    GPU) on the CUDA C++ kernels."""
    if request.param == "cuda":
        import fastops

        with fastops.use_backend("cuda"):
            yield "cuda"
    else:
        yield "cpu"


@pytest.fixture(autouse=True)
def _seed(request):
    """Fresh random data for every test, reproducible from the test's name."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


def pytest_configure(config):
    import fastops

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source_tree = os.path.join(here, "fastops")
    if os.path.dirname(os.path.abspath(fastops.__file__)) == source_tree and not fastops.has_extension():
        raise pytest.UsageError(
            "the tests imported fastops from the source tree, which has no compiled kernels: run "
            "`pytest tests` (not `python -m pytest`, which puts the source tree first on sys.path), "
            "or install in editable mode with `pip install --no-build-isolation -e .`"
        )
