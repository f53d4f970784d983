"""Networks: ResNet backbones, the DeepLabv3+ head, the two-branch CPCL network, and the one
model factory (`build_model`) that training, evaluation and the scripts use."""

from .factory import ARCHITECTURES, ModelSettings, build_model
from .network import Network, SingleNetwork

__all__ = ["ARCHITECTURES", "ModelSettings", "Network", "SingleNetwork", "build_model"]
