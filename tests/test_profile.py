"""MAC counting checked on a network small enough to count by hand."""
import torch.nn as nn

from models import count_macs, count_params


def test_macs_of_a_hand_counted_network():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=1, padding=1, bias=False),   # 8*8*8 outputs * 3*3*3 = 13,824
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),      # 8*4*4 outputs * 1*3*3 = 1,152
        nn.Conv2d(8, 16, 1),                                    # 16*4*4 outputs * 8 = 2,048
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10),                                      # 10 * 16 = 160
    )
    assert count_macs(net, (3, 8, 8)) == 13_824 + 1_152 + 2_048 + 160
    assert count_params(net) == 3 * 8 * 9 + (8 * 9 + 8) + (8 * 16 + 16) + (16 * 10 + 10)


def test_macs_scale_with_resolution_and_leave_mode_alone():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    net.train()
    assert count_macs(net, 16) * 4 == count_macs(net, 32)
    assert net.training
