"""Wide residual networks (Zagoruyko & Komodakis, 2016) for small images.

WRN-``depth``-``width``: a 3x3 stem of 16 channels, then three groups of ``(depth - 4) / 6``
pre-activation basic blocks with ``16k``, ``32k`` and ``64k`` channels (strides 1, 2, 2), then
BN-activation, global average pooling and a linear classifier: the reference layout
(xternalz/WideResNet-pytorch, used by the original report; tests/test_models.py checks its parameter
count).  Works at any input size (28 or 32 px here).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import WRN_ACTIVATIONS


class BasicBlock(nn.Module):
    """Pre-activation block: BN-act-conv3x3(stride)-BN-act-dropout-conv3x3, plus the shortcut.

    When the shape changes, the 1x1 projection shortcut takes the pre-activated input, as in the
    reference implementation (so BN-act is shared by both paths).
    """

    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module], dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = act()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = act()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        y = self.conv2(self.drop(self.act2(self.bn2(self.conv1(o)))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """``forward(x: float (B, in_chans, H, W)) -> logits float (B, num_classes)``."""

    def __init__(self, depth: int = 40, width: int = 4, num_classes: int = 10, in_chans: int = 1,
                 act: str = "relu", dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if width < 1:
            raise ValueError(f"WRN width must be >= 1, got {width}")
        if act not in WRN_ACTIVATIONS:
            raise ValueError(f"activation {act!r} is not one of {', '.join(WRN_ACTIVATIONS)}")
        n = (depth - 4) // 6
        act_cls = getattr(nn, WRN_ACTIVATIONS[act])
        widths = (16 * width, 32 * width, 64 * width)
        self.stem = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        blocks, cin = [], 16
        for cout, stride in zip(widths, (1, 2, 2)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1, act_cls, dropout))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.act = act_cls()
        self.fc = nn.Linear(cin, num_classes)
        self.num_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.blocks(self.stem(x))))
        # mean over H, W rather than adaptive_avg_pool2d, whose CUDA backward is nondeterministic
        return self.fc(x.mean(dim=(2, 3)))
