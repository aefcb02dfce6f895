"""ResNet-101 (He et al. 2016) with torchvision's layout, as the image encoder of captioning.

The module and parameter names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, …,
``layer4.2.downsample.0``, ``fc``), so a torchvision ResNet-101 weights file
(``resnet101-*.pth``, a plain state dict) loads as is. The pretrained classifier ``fc`` is not
needed: :meth:`ResNet101.features` returns the 2048-d global-average-pooled feature of the last
block (NIC's and the paper's image representation). Written here rather than imported from
torchvision because torchvision's PyPI wheels are CUDA builds that do not load with a CPU torch.

Plain torch; no ray.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from rayseq.data.errors import DataError

FEATURE_DIM = 2048
"""Size of the pooled feature (512 × Bottleneck expansion 4)."""
LAYERS = (3, 4, 23, 3)
"""Bottleneck blocks per stage of ResNet-101."""


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride here, as torchvision's "ResNet v1.5") → 1×1 ×4, plus the shortcut."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet101(nn.Module):
    """torchvision's ``resnet101`` (same names, same shapes)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        stages = []
        for i, (blocks, width) in enumerate(zip(LAYERS, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            down = nn.Sequential(
                nn.Conv2d(in_ch, width * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(width * 4)
            )
            layer = [Bottleneck(in_ch, width, stride, down)]
            in_ch = width * 4
            layer += [Bottleneck(in_ch, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(FEATURE_DIM, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled last-block features ``[B, 2048]`` of normalised images ``[B, 3, H, W]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]`` (unused for captioning)."""
        return self.fc(self.features(images))


def load_resnet101(weights: str | os.PathLike[str]) -> ResNet101:
    """A ResNet-101 in eval mode with the weights of a local state-dict file (``fc`` optional).

    DataError naming the file when it is missing, not a torch file, or not a ResNet-101 state dict.
    """
    path = Path(weights)
    if not path.is_file():
        raise DataError(f"--weights {path}: file not found. Pass a local ResNet-101 state dict (e.g. torchvision's resnet101-*.pth).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for non-torch files
        raise DataError(f"{path}: not a torch weights file ({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}).") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: expected a ResNet-101 state dict (parameter name -> tensor), got {type(state).__name__}.")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    model = ResNet101()
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise DataError(
            f"{path}: not a ResNet-101 state dict (torchvision layout): {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}), {len(wrong)} of the "
            f"wrong shape (e.g. {wrong[:1]})."
        )
    model.load_state_dict(state, strict=False)
    return model.eval()
