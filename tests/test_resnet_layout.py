"""`dilated_layout`: torchvision's replace_stride_with_dilation scheme used by U2PL and UniMatch."""

import pytest
import torch

from cpcl.models.resnet import dilated_layout, resnet18, resnet101


def test_u2pl_layout_output_stride_8_multi_grid():
    # U2PL (u2pl/models/resnet.py:232-277): [F, T, T] with grids [2, 2, 4] on layer4.
    strides, dilations = dilated_layout([3, 4, 23, 3], [False, True, True], multi_grid=[2, 2, 4])
    assert strides == (1, 2, 1, 1)
    assert dilations[2] == (1,) + (2,) * 22
    assert dilations[3] == (4, 8, 16)


def test_unimatch_layout_output_stride_16():
    # UniMatch (model/backbone/resnet.py:111-133): [F, F, T], first layer4 block keeps dilation 1.
    strides, dilations = dilated_layout([3, 4, 23, 3], [False, False, True])
    assert strides == (1, 2, 2, 1)
    assert dilations[3] == (1, 2, 2)


def test_explicit_layout_builds_and_keeps_key_names():
    strides, dilations = dilated_layout([2, 2, 2, 2], [False, True, True])
    net = resnet18(layer_strides=strides, layer_dilations=dilations, maxpool_ceil_mode=True).eval()
    assert net.state_dict().keys() == resnet18().state_dict().keys()
    assert net.layer4[1].conv1.dilation == (4, 4)
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 64))
    # ceil-mode max-pool: 64 -> 32 -> 17 (floor mode gives 16); stride 8 afterwards.
    assert [f.shape[-1] for f in feats] == [17, 9, 9, 9]


def test_bad_layouts_are_named_errors():
    with pytest.raises(ValueError, match="multi_grid"):
        dilated_layout([3, 4, 23, 3], [False, True, True], multi_grid=[2, 2])
    with pytest.raises(ValueError, match="together"):
        resnet101(layer_strides=(1, 2, 2, 1))
