"""Every network of the paper, from one parametrised :class:`ResNet`.

uv run python -c "from reslab.models import create_model; print(create_model('resnet20'))"
"""

from reslab.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from reslab.models.complexity import Complexity, complexity, count_macs, count_params
from reslab.models.factory import create_model
from reslab.models.layers import PadShortcut, ProjectionShortcut, shortcut_factory
from reslab.models.registry import get_model_spec, list_models, register_model
from reslab.models.resnet import ResNet, cifar_resnet, imagenet_resnet

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "Complexity",
    "PadShortcut",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ProjectionShortcut",
    "ResNet",
    "cifar_resnet",
    "complexity",
    "count_macs",
    "count_params",
    "create_model",
    "get_model_spec",
    "imagenet_resnet",
    "list_models",
    "register_model",
    "shortcut_factory",
]
