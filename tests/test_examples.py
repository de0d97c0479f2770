"""examples/train.py runs end to end and the loss falls (a short run of the README's example)."""

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchvision")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train.py"


def test_train_example_loss_falls():
    spec = importlib.util.spec_from_file_location("fastops_example_train", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        h = module.main(["--epochs", "2", "--train-size", "1024", "--test-size", "128", "--noise", "1",
                         "--width-mult", "0.25", "--compare-torchvision", "2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert h["loss"][1] < 0.8 * h["loss"][0], h["loss"]
    assert h["loss_diffs"][0] < 1e-4  # the first step's loss equals torchvision's
    assert 0.0 <= h["test_acc"] <= 1.0
