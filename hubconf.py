"""torch.hub entry points of a reslab checkout: every registered model, with weights by name.

    torch.hub.load("path/to/reslab", "resnet20", weights="cifar10", source="local")
    torch.hub.load("path/to/reslab", "resnet50", weights="imagenet", source="local")  # torchvision's

``weights`` takes what ``reslab weights list`` shows (a tag such as ``cifar10`` or a full name) or a
weights file; without it the model is He-initialised. Other keywords are the model's options.
"""

import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "safetensors", "yaml"]

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from reslab.models import create_model, list_models  # noqa: E402


def _entry(name: str):
    def load(weights: str | None = None, **options):
        return create_model(name, weights=weights, **options)

    load.__doc__ = f"reslab's {name} (``weights``: a name of `reslab weights list` or a file)."
    return load


for _name in list_models():
    globals()[_name] = _entry(_name)
