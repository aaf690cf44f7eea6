"""Models: the paper's AlexNet, its ablations, torchvision's variant and the small CIFAR-10 nets."""

from alexnet.models.alexnet import AlexNet, AlexNetConfig, ConvSpec
from alexnet.models.lrn import LocalResponseNorm, local_response_norm
from alexnet.models.registry import create_model, list_models, model_config

__all__ = [
    "AlexNet",
    "AlexNetConfig",
    "ConvSpec",
    "LocalResponseNorm",
    "create_model",
    "list_models",
    "local_response_norm",
    "model_config",
]
