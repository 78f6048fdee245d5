"""External check of the CIFAR architecture: akamaster's published option-A weights load into
reslab's model and reproduce their published test accuracy on the real CIFAR-10 test set."""

from __future__ import annotations

import pytest
import torch

from reslab.data import Normalize, load_cifar10
from reslab.models import create_model

PUBLISHED = {20: 91.73, 32: 92.63, 44: 93.10, 56: 93.39}
FILES = {
    20: "resnet20-12fca82f.th",
    32: "resnet32-d509ac18.th",
    44: "resnet44-014dd654.th",
    56: "resnet56-4bfd9763.th",
}


def akamaster_state_dict(path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("module.").replace("linear.", "fc."): v for k, v in state.items()}


@pytest.mark.parametrize(
    "depth", [20, *(pytest.param(d, marks=pytest.mark.slow) for d in (32, 44, 56))]
)
def test_akamaster_weights_reproduce_published_accuracy(data_dir, depth):
    path = data_dir / "external-weights" / "cifar10-akamaster" / FILES[depth]
    if not path.is_file():
        pytest.skip(f"{path} not found")
    model = create_model(f"resnet{depth}", shortcut_pad="both").eval()
    model.load_state_dict(akamaster_state_dict(path), strict=True)
    images, labels = load_cifar10(data_dir, "test")
    norm = Normalize(
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
        "channel",
    )
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), 1000):
            correct += (
                (model(norm(images[i : i + 1000])).argmax(1) == labels[i : i + 1000]).sum().item()
            )
    assert 100 * correct / len(images) == pytest.approx(PUBLISHED[depth], abs=0.015)
