"""A paper ResNet-20 on CIFAR-10 from reslab's pieces, without its CLI or its run directories.

    RESLAB_DATA=../shared/data uv run python examples/minimal_cifar.py --iterations 2000

The paper's recipe (Sec. 4.2) on one screen: the 50k training images in memory, the per-pixel mean
subtracted, 4-pixel padding with a random 32x32 crop and a flip drawn per batch, SGD with momentum
0.9 in the paper's form and weight decay 1e-4, batch 128, lr 0.1 divided by 10 at half and three
quarters of the iterations (32k and 48k of the paper's 64k), then the error on the 10k test images.
``reslab train cifar10/resnet20`` runs the same recipe with checkpoints, resume, logs and a summary.
"""

import argparse
import time

import torch

from reslab.data.cifar import load_cifar10
from reslab.data.loaders import TensorLoader
from reslab.data.transforms import Normalize
from reslab.engine.evaluate import evaluate
from reslab.engine.optim import PaperSGD, StepSchedule
from reslab.engine.runtime import resolve_precision
from reslab.engine.step import train_step
from reslab.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description="a paper ResNet-20 on CIFAR-10")
    parser.add_argument("--iterations", type=int, default=64_000, help="the paper's: 64,000")
    parser.add_argument("--data-dir", help="holds cifar-10-batches-py (default: $RESLAB_DATA)")
    args = parser.parse_args()
    torch.manual_seed(0)

    train_x, train_y = load_cifar10(args.data_dir, "train")  # uint8 50000 x 3 x 32 x 32
    test_x, test_y = load_cifar10(args.data_dir, "test")
    normalize = Normalize.fit(train_x, "pixel")  # the per-pixel mean of the training images

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return normalize(x).contiguous(memory_format=torch.channels_last)

    train = TensorLoader(train_x, train_y, 128, prepare, train=True, pad=4, seed=0)
    test = TensorLoader(test_x, test_y, 1000, prepare, train=False)

    model = create_model("resnet20").to(memory_format=torch.channels_last)  # option A shortcuts
    optimizer = PaperSGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    n = args.iterations
    schedule = StepSchedule(0.1, milestones=[n // 2, 3 * n // 4], gamma=0.1)
    precision, _ = resolve_precision("auto", torch.device("cpu"))  # bf16 where it is native

    window = torch.zeros(3, dtype=torch.float64)  # loss sum, errors, images
    iteration, epoch, start = 0, 0, time.perf_counter()
    while iteration < n:
        for images, labels in train.batches(epoch):
            optimizer.zero_grad(set_to_none=True)
            train_step(model, optimizer, images, labels, precision, schedule.lr(iteration), window)
            iteration += 1
            if iteration % 100 == 0 or iteration == n:
                loss, errors, seen = window.tolist()
                window.zero_()
                print(
                    f"iteration {iteration}: loss {loss / seen:.3f}, training error "
                    f"{100 * errors / seen:.1f}%, {iteration * 128 / (time.perf_counter() - start):.0f} images/s"
                )
            if iteration == n:
                break
        epoch += 1

    result = evaluate(model, test.batches())
    print(f"test error {result['error']:.2f}% after {n} iterations (the paper: 8.75% after 64,000)")


if __name__ == "__main__":
    main()
