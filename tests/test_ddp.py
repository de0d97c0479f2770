"""fastops models train under DistributedDataParallel exactly as a single process would.

Two CPU processes (gloo, FileStore rendezvous in tmp_path) train a small fastops model for two
SGD steps under DDP, each on its half of a global batch; the parent process trains the same
model (same initial weights) alone on the same global batch, and the gradients, parameters and
BatchNorm buffers must agree.

BatchNorm is per replica: nn.SyncBatchNorm cannot be used here, because its forward raises
"SyncBatchNorm expected input tensor to be on GPU or XPU ..." for CPU tensors whenever a process
group is initialised (torch/nn/modules/batchnorm.py, SyncBatchNorm.forward). So under DDP each
rank normalises with its own half's batch statistics, and the single-process reference must do
the same: it runs each half as a separate train-mode forward and uses
    loss = (L(half0) + L(half1)) / 2,
whose gradient is exactly the mean of the per-rank gradients that DDP's all-reduce computes.

Buffers (running_mean / running_var / num_batches_tracked): with broadcast_buffers=True (the
default) DDP copies rank 0's buffers to every rank before each forward, then each rank updates
them from its own half. So after step k, rank r's buffers are "rank 0's buffers after step k-1,
updated once from half r of step k", and rank 0's buffers follow a model that only ever saw
half0. The reference reproduces this: it starts each half's forward from the same saved buffers
(rank 0's of the previous step), records the buffers after each half, and carries half0's
forward into the next step. (Running statistics do not affect train-mode outputs, so this
bookkeeping cannot change the gradients.)

Dropout (MobileNet V2's classifier) stays on: each rank re-seeds the global RNG before its
forward with a seed depending on (step, rank), and the reference uses the same seed before the
forward of the same half, so the dropout masks are identical.
"""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import fastops
import fastops.models

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")

WORLD_SIZE = 2
STEPS = 2
PER_RANK_BATCH = 8
IMAGE_SIZE = 32
NUM_CLASSES = 10
TIMEOUT_S = 120  # a hung worker (e.g. a collective that never completes) fails the test instead of blocking CI
# float32 sums in a different order (all-reduce vs one backward): rtol 1e-4, and atol 1e-4 of the
# tensor's largest entry (small-batch BatchNorm makes some gradients large, ~50)
RTOL, ATOL = 1e-4, 1e-4

MODELS = {
    "mobilenet_v2": dict(width_mult=0.25, num_classes=NUM_CLASSES),
    "shufflenet_v2_x0_5": dict(num_classes=NUM_CLASSES),
}


def _build(name):
    return fastops.models.create_model(name, **MODELS[name])


def _optimizer(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


def _dropout_seed(step, rank):
    return 1000 + 10 * step + rank


def _clone(named):
    return {n: t.detach().clone() for n, t in named}


def _worker(rank, tmp_dir, names, parent_fastops):
    """One DDP replica: for each model, trains STEPS steps on its half of each global batch and
    saves its gradients, buffers and final parameters."""
    if (fastops.__file__, fastops.has_extension()) != parent_fastops:  # e.g. a source tree ahead on sys.path
        raise RuntimeError(f"worker imported fastops {fastops.__file__} (kernels: {fastops.has_extension()}), "
                           f"the test process {parent_fastops}")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + os.path.join(tmp_dir, "store"),
                            rank=rank, world_size=WORLD_SIZE)
    try:
        for name in names:
            init = torch.load(os.path.join(tmp_dir, f"{name}-init.pt"))
            model = _build(name)
            model.load_state_dict(init["state"])
            model.train()
            ddp = DistributedDataParallel(model)  # broadcast_buffers=True: rank 0's buffers before each forward
            opt = _optimizer(ddp.parameters())
            out = {"grads": [], "buffers": []}
            for step in range(STEPS):
                torch.manual_seed(_dropout_seed(step, rank))
                loss = F.cross_entropy(ddp(init["x"][step, rank]), init["y"][step, rank])
                out["buffers"].append(_clone(model.named_buffers()))
                opt.zero_grad()
                loss.backward()  # DDP all-reduces: grads = mean over ranks
                out["grads"].append({n: p.grad.clone() for n, p in model.named_parameters()})
                opt.step()
            out["params"] = _clone(model.named_parameters())
            torch.save(out, os.path.join(tmp_dir, f"{name}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _reference(name, init):
    """One process, the same global batches, per-replica BatchNorm and buffers (see the docstring)."""
    model = _build(name)
    model.load_state_dict(init["state"])
    model.train()
    opt = _optimizer(model.parameters())
    out = {"grads": [], "buffers": []}
    for step in range(STEPS):
        start = _clone(model.named_buffers())  # rank 0's buffers, broadcast by DDP before the forward
        losses, buffers = [], []
        for rank in range(WORLD_SIZE):
            with torch.no_grad():
                for n, b in model.named_buffers():
                    b.copy_(start[n])
            torch.manual_seed(_dropout_seed(step, rank))
            losses.append(F.cross_entropy(model(init["x"][step, rank]), init["y"][step, rank]))
            buffers.append(_clone(model.named_buffers()))
        with torch.no_grad():  # rank 0's updated buffers are what the next step broadcasts
            for n, b in model.named_buffers():
                b.copy_(buffers[0][n])
        out["buffers"].append(buffers)
        opt.zero_grad()
        (sum(losses) / WORLD_SIZE).backward()
        out["grads"].append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
    out["params"] = _clone(model.named_parameters())
    return out


def _run_workers(tmp_dir, names):
    parent_fastops = (fastops.__file__, fastops.has_extension())
    ctx = mp.start_processes(_worker, args=(tmp_dir, names, parent_fastops), nprocs=WORLD_SIZE, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1.0):  # raises if a worker failed (and ends the others)
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)


def _assert_close(actual, expected, what):
    assert actual.keys() == expected.keys(), what
    for n, e in expected.items():
        atol = ATOL * max(1.0, e.abs().max().item()) if e.is_floating_point() else 0
        torch.testing.assert_close(actual[n], e, rtol=RTOL if atol else 0, atol=atol,
                                   msg=lambda m: f"{what} {n}: {m}")


def _init(name):
    """The initial weights and the global batches (seeded random images and labels)."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # reproducible weights, global RNG untouched
        torch.manual_seed(0)
        model = _build(name)
    return {
        "state": model.state_dict(),
        "x": torch.randn(STEPS, WORLD_SIZE, PER_RANK_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
        "y": torch.randint(0, NUM_CLASSES, (STEPS, WORLD_SIZE, PER_RANK_BATCH), generator=g),
    }


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Every model of MODELS trained under DDP by one pair of worker processes (spawning and
    importing torch dominates the cost, so it is paid once): {name: (init, [rank results])}."""
    tmp_dir = tmp_path_factory.mktemp("ddp")
    inits = {name: _init(name) for name in MODELS}
    for name, init in inits.items():
        torch.save(init, tmp_dir / f"{name}-init.pt")
    _run_workers(str(tmp_dir), list(MODELS))
    return {name: (init, [torch.load(tmp_dir / f"{name}-rank{r}.pt") for r in range(WORLD_SIZE)])
            for name, init in inits.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_ddp_matches_single_process(ddp_run, name):
    init, ranks = ddp_run[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the workers; also far faster than 2 threads on a busy 2-core box
    try:
        ref = _reference(name, init)
    finally:
        torch.set_num_threads(threads)

    for r, got in enumerate(ranks):
        for step in range(STEPS):
            _assert_close(got["grads"][step], ref["grads"][step], f"rank {r} step {step} grad")
            _assert_close(got["buffers"][step], ref["buffers"][step][r], f"rank {r} step {step} buffer")
        _assert_close(got["params"], ref["params"], f"rank {r} param after {STEPS} steps")

    # the check is not vacuous: training moved the weights, and the two replicas' BatchNorm
    # statistics differ (rank 1's buffers are not rank 0's)
    assert any(not torch.equal(ref["params"][n], init["state"][n]) for n in ref["params"])
    b0, b1 = ref["buffers"][-1]
    assert any(not torch.allclose(b0[n], b1[n]) for n in b0 if n.endswith("running_mean"))
