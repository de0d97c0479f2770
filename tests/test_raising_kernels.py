"""A C++ kernel that rejects its arguments raises a Python exception: it never takes the process
down. torch.ops.fastops.* is called straight, so the kernels' own checks are what raise (the
Python layer, fastops.ops, checks first otherwise).

On an H200 machine (torch 2.11, 2026-11-30) such calls crashed the process, on CPU tensors too;
here (torch 2.14) they raise. Each case runs in its own process, so that a crash fails one case
and says which path crashed: through the C++ autograd Functions (csrc/autograd.cpp), through a
Python autograd formula (stem_conv_bn_act's, CPU), and below autograd (inference mode: the
kernel alone)."""

import os
import subprocess
import sys
import textwrap

import pytest

SETUP = """
import torch, fastops
dev = {device!r}
x = torch.randn(2, 6, 3, 3, device=dev)
w = torch.randn(4, 3, 1, 1, device=dev)
"""

CASES = {
    "pwconv_bn_act": ("torch.ops.fastops.pwconv_bn_act(x, w, None, None, 4, 'relu', None, 1)",
                      "ValueError", "argument 'groups' (4) does not divide the 6 channels"),
    "pwconv_bn_act-inference_mode": (
        "with torch.inference_mode():\n    torch.ops.fastops.pwconv_bn_act(x, w, None, None, 4, 'relu', None, 1)",
        "ValueError", "argument 'groups' (4) does not divide the 6 channels"),
    "channel_shuffle": ("torch.ops.fastops.channel_shuffle(x, 4)", "ValueError", "argument 'groups' (4) does not divide"),
    "concat_shuffle_backward": ("torch.ops.fastops.concat_shuffle_backward(x, 7)", "ValueError",
                                "argument 'split' must be in"),
    "squeeze_excite": ("torch.ops.fastops.squeeze_excite(x, torch.randn(2, 5, device=dev), None, "
                       "torch.randn(6, 2, device=dev), None, 'relu', 'sigmoid')", "ValueError", "argument 'w1' must have shape"),
    "dwconv_bn_act": ("torch.ops.fastops.dwconv_bn_act(x, torch.randn(6, 1, 3, 3, device=dev), None, None, "
                      "[0, 0], [1, 1], [1, 1], 'relu')", "ValueError", "stride"),
    "hardswish": ("torch.ops.fastops.hardswish(torch.arange(4, device=dev))", "TypeError",
                  "must be a floating-point tensor"),
}


def _raises_in_a_process(device, stmt, exc, text):
    pytest.importorskip("fastops._C")
    code = (SETUP.format(device=device) + "try:\n" + textwrap.indent(stmt, "    ") + "\n"
            + f"except {exc} as e:\n    print('RAISED', e)\nelse:\n    print('NO ERROR')\n")
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    assert result.returncode == 0, f"the process died (rc {result.returncode}):\n{result.stderr[-3000:]}"
    assert "RAISED" in result.stdout and text in result.stdout and "fastops." in result.stdout, result.stdout


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_argument_errors_raise_never_crash(device, case):
    _raises_in_a_process(device, *CASES[case])


def test_kernel_argument_error_below_a_python_autograd_formula_raises():
    """stem_conv_bn_act's autograd is a Python formula (torch.library.register_autograd) and its
    CPU kernel C++ (on CUDA the op is the Python reference, which raises in Python)."""
    _raises_in_a_process("cpu", "torch.ops.fastops.stem_conv_bn_act(x, torch.randn(4, 5, 3, 3), None, None, "
                         "[2, 2], [1, 1], 'relu')", "ValueError", "argument 'weight' must have shape")
