import os
import zlib

# Triton kernels run on CPU tensors only under Triton's interpreter, which is bound when a kernel
# is defined: switch it on before anything imports fastops.triton. On a GPU machine the Triton
# tests run compiled, on CUDA tensors.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed(request):
    """Fresh random data for every test, reproducible from the test's name."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
