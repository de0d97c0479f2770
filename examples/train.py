"""Train a fastops network on a synthetic 10-class image task (nothing to download).

    python examples/train.py                                  # mobilenet_v2(width_mult=0.5), ~1 min on 2 CPU cores
    python examples/train.py --model shufflenet_v2_x0_5 --epochs 3
    python examples/train.py --compare-torchvision 10         # + torchvision's twin in lockstep for 10 steps
    python examples/train.py --compare-torchvision 10 --dtype float64 --epochs 1 --train-size 640  # slow

The data: each class is a fixed random smooth 3 x S x S pattern; an image is its class's
pattern plus Gaussian noise, so the labels are learnable (torchvision's FakeData draws random
labels, which no model can learn). The recipe is the ResNet one: SGD with momentum 0.9, weight
decay 1e-4 (the ResNet value, not the 4e-5 of the MobileNet papers), a step learning-rate
schedule (StepLR, x0.1) and cross-entropy. Training mode uses batch statistics in the fused
BatchNorm kernels; the final evaluation runs in eval mode (BatchNorm folded into the kernels).

--compare-torchvision N: the float32 losses of the two models agree to ~1e-6 at the first step
and then drift apart (1e-2 to 1e-1 within ten steps): from a fresh initialisation, training amplifies
float32 rounding differences (different summation orders) several-fold per step, and the two
implementations drift no further apart than either does from a float64 run. With --dtype float64
the two agree to ~1e-14 at first and stay within ~1e-7 for ten steps.
"""

import argparse
import inspect
import time

import torch
import torch.nn.functional as F

import fastops.models


def make_data(num_classes, image_size, n_train, n_test, noise, seed):
    """(x_train, y_train, x_test, y_test): class pattern + noise, patterns smooth (upsampled 4x4)."""
    g = torch.Generator().manual_seed(seed)
    patterns = F.interpolate(torch.randn(num_classes, 3, 4, 4, generator=g), size=(image_size, image_size),
                             mode="bilinear", align_corners=False)
    patterns = patterns / patterns.std(dim=(1, 2, 3), keepdim=True)

    def split(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        return patterns[y] + noise * torch.randn(n, 3, image_size, image_size, generator=g), y

    return (*split(n_train), *split(n_test))


def build(name, num_classes, width_mult, torchvision_twin=False):
    """The fastops model `name` (or torchvision's model of that name with the same arguments)."""
    kwargs = {"num_classes": num_classes}
    builder = getattr(fastops.models, name, None)
    if builder is not None and "width_mult" in inspect.signature(builder).parameters:
        kwargs["width_mult"] = width_mult
    if torchvision_twin:
        import torchvision

        return torchvision.models.get_model(name, **kwargs)
    return fastops.models.create_model(name, **kwargs)


def make_optimizer(model, args):
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=args.lr_step, gamma=0.1)


def train_step(model, opt, x, y):
    out = model(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), (out.argmax(1) == y).sum().item()


@torch.no_grad()
def evaluate(model, x, y, batch_size, memory_format):
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].contiguous(memory_format=memory_format)
        correct += (model(xb).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / len(x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mobilenet_v2", choices=fastops.models.list_models())
    p.add_argument("--width-mult", type=float, default=0.5, help="for models whose builder takes width_mult")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="default: the ResNet rule, 0.1 x batch size / 256")
    p.add_argument("--lr-step", type=int, default=3, help="StepLR: lr x0.1 every this many epochs")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--train-size", type=int, default=4096)
    p.add_argument("--test-size", type=int, default=512)
    p.add_argument("--noise", type=float, default=3.0, help="std of the noise added to the class patterns")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default; "
                   "1 is much faster on a machine whose cores are busy with other work)")
    p.add_argument("--compare-torchvision", type=int, nargs="?", const=10, default=0, metavar="N",
                   help="train torchvision's twin (same initial weights) on the same batches for the "
                        "first N steps (default 10) and print the loss differences")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = 0.1 * args.batch_size / 256

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x_train, y_train, x_test, y_test = make_data(args.num_classes, args.image_size, args.train_size,
                                                 args.test_size, args.noise, args.seed)
    x_train, x_test = x_train.to(dtype), x_test.to(dtype)
    model = build(args.model, args.num_classes, args.width_mult).to(dtype, memory_format=fmt)
    opt, sched = make_optimizer(model, args)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{len(x_train)} train / {len(x_test)} test images, {'channels_last' if args.channels_last else 'NCHW'}")

    twin = None
    if args.compare_torchvision:
        import torchvision

        if args.model not in torchvision.models.list_models():
            print(f"--compare-torchvision: torchvision has no {args.model}; skipped")
        else:
            twin = build(args.model, args.num_classes, args.width_mult, torchvision_twin=True)
            twin.load_state_dict(model.state_dict())
            twin = twin.to(dtype, memory_format=fmt).train()
            twin_opt, twin_sched = make_optimizer(twin, args)
            loss_diffs = []

    step, history = 0, {"loss": [], "train_acc": [], "loss_diffs": []}
    for epoch in range(args.epochs):
        model.train()
        start, total_loss, correct = time.perf_counter(), 0.0, 0
        order = torch.randperm(len(x_train))
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            xb, yb = x_train[idx].contiguous(memory_format=fmt), y_train[idx]
            rng = torch.get_rng_state()  # dropout: the twin sees the same masks
            loss, c = train_step(model, opt, xb, yb)
            if twin is not None and step < args.compare_torchvision:
                torch.set_rng_state(rng)
                twin_loss, _ = train_step(twin, twin_opt, xb, yb)
                loss_diffs.append(abs(loss.item() - twin_loss.item()))
            total_loss += loss.item() * len(idx)
            correct += c
            step += 1
        lr = sched.get_last_lr()[0]
        sched.step()
        if twin is not None:
            twin_sched.step()
        history["loss"].append(total_loss / len(x_train))
        history["train_acc"].append(correct / len(x_train))
        print(f"epoch {epoch + 1}/{args.epochs}  lr {lr:.4g}  loss {total_loss / len(x_train):.4f}  "
              f"train acc {correct / len(x_train):.3f}  ({time.perf_counter() - start:.1f} s)")

    if twin is not None and loss_diffs:
        history["loss_diffs"] = loss_diffs
        print(f"torchvision {args.model} in lockstep for {len(loss_diffs)} steps: max |loss difference| "
              f"{max(loss_diffs):.1e}; per step: {' '.join(f'{d:.0e}' for d in loss_diffs)}")
    history["test_acc"] = evaluate(model, x_test, y_test, 256, fmt)
    print(f"test accuracy (eval mode): {history['test_acc']:.3f}")
    return history


if __name__ == "__main__":
    main()
