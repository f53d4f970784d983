"""Networks: ResNet backbones, the DeepLabv3+ head and the two-branch CPCL network."""

from .network import Network, SingleNetwork

__all__ = ["Network", "SingleNetwork"]
