"""Cohen et al.'s architectures (locuslab/smoothing ``get_architecture``), written from the
papers' descriptions, with the state_dict key names of their released checkpoints.

Their checkpoints are ``{'epoch', 'arch', 'state_dict', 'optimizer'}`` with ``arch`` one of
``cifar_resnet20``, ``cifar_resnet110`` or ``resnet50``, and the model is
``Sequential(normalisation layer, network)``: the normalisation layer has no state, so every
key starts with ``1.`` (``1.module.`` for the ImageNet ResNet-50, which they wrap in
DataParallel). Inputs are pixels in [0, 1]; the normalisation is the model's first layer, so
the noise is added before it (as in their paper).

- CIFAR ResNets (He et al. 2016, section 4.2, depth 6n + 2): a 3x3 convolution to 16 channels,
  three stages of n basic blocks (two 3x3 convolutions with BatchNorm) at 16 / 32 / 64 channels
  and strides 1 / 2 / 2, a 1x1-convolution + BatchNorm projection where a block changes shape,
  8x8 average pooling and a linear layer. Input 3 x 32 x 32.
- ImageNet ResNet-50 (He et al. 2016, table 1): 7x7/2 convolution, 3x3/2 max pooling, stages of
  3 / 4 / 6 / 3 bottleneck blocks (1x1, 3x3 with the stage's stride, 1x1 to 4x the width), a
  projection shortcut on each stage's first block, global average pooling, linear layer.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ChannelNormalize(nn.Module):
    """(x - mean) / std per channel. Its constants are non-persistent buffers: Cohen's
    normalisation layer has no state_dict entries, so the checkpoints hold none."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def _conv_bn(in_planes: int, planes: int, kernel: int, stride: int = 1):
    conv = nn.Conv2d(in_planes, planes, kernel, stride=stride, padding=kernel // 2, bias=False)
    return conv, nn.BatchNorm2d(planes)


def _projection(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    """The shortcut where a block changes shape (keys downsample.0 / downsample.1)."""
    return nn.Sequential(*_conv_bn(in_planes, planes, 1, stride))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_planes, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (_projection(in_planes, planes, stride)
                           if stride != 1 or in_planes != planes else None)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_planes, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, out_planes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (_projection(in_planes, out_planes, stride)
                           if stride != 1 or in_planes != out_planes else None)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def _stage(block, in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    expansion = getattr(block, "expansion", 1)
    layers = [block(in_planes, planes, stride)]
    layers += [block(planes * expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _init_like_he(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _check_cifar_input(x: torch.Tensor) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
        raise ValueError(f"a CIFAR ResNet takes (N, 3, 32, 32) images, got {tuple(x.shape)}")


# a call in the traced graph, not traced through: torch.fx can then trace the whole network
# (fold.py folds its BatchNorms) and the check still runs on every call
torch.fx.wrap("_check_cifar_input")


class CifarResNetBody(nn.Module):
    """The CIFAR ResNet of depth 6n + 2 without its normalisation layer."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1, self.bn1 = _conv_bn(3, 16, 3)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(BasicBlock, 16, 16, blocks, 1)
        self.layer2 = _stage(BasicBlock, 16, 32, blocks, 2)
        self.layer3 = _stage(BasicBlock, 32, 64, blocks, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)
        _init_like_he(self)

    def forward(self, x):
        _check_cifar_input(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ImageNetResNet50Body(nn.Module):
    """ResNet-50 for 224 x 224 ImageNet images (torchvision's key names)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths, counts, strides = (64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 2, 2)
        in_planes = 64
        for k, (planes, blocks, stride) in enumerate(zip(widths, counts, strides), start=1):
            setattr(self, f"layer{k}", _stage(Bottleneck, in_planes, planes, blocks, stride))
            in_planes = planes * Bottleneck.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_like_he(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _DataParallelKeys(nn.Module):
    """Holds a network as ``.module``, the key prefix DataParallel gives Cohen's ResNet-50."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


class _CohenModel(nn.Sequential):
    """Sequential(normalisation, network): Cohen's layout, hence keys ``1.*``."""

    def __init__(self, normalize: nn.Module, network: nn.Module, config: dict):
        super().__init__(normalize, network)
        self.config = config


class CifarResNet20(_CohenModel):
    """Cohen's ``cifar_resnet20``: CIFAR-10 normalisation, then a CIFAR ResNet-20."""

    def __init__(self, num_classes: int = 10):
        super().__init__(ChannelNormalize(CIFAR10_MEAN, CIFAR10_STD),
                         CifarResNetBody(20, num_classes), dict(num_classes=int(num_classes)))


class CifarResNet110(_CohenModel):
    """Cohen's ``cifar_resnet110``: CIFAR-10 normalisation, then a CIFAR ResNet-110."""

    def __init__(self, num_classes: int = 10):
        super().__init__(ChannelNormalize(CIFAR10_MEAN, CIFAR10_STD),
                         CifarResNetBody(110, num_classes), dict(num_classes=int(num_classes)))


class ImageNetResNet50(_CohenModel):
    """Cohen's ``resnet50``: ImageNet normalisation, then ResNet-50 under DataParallel keys."""

    def __init__(self, num_classes: int = 1000):
        super().__init__(ChannelNormalize(IMAGENET_MEAN, IMAGENET_STD),
                         _DataParallelKeys(ImageNetResNet50Body(num_classes)),
                         dict(num_classes=int(num_classes)))


#: Cohen's architecture names (the ``arch`` of their checkpoints) -> our classes
COHEN_ARCHS = {"cifar_resnet20": CifarResNet20, "cifar_resnet110": CifarResNet110,
               "resnet50": ImageNetResNet50}


def arch_of_checkpoint(obj) -> str | None:
    """The architecture a Cohen-format checkpoint ``{'arch': name, 'state_dict': ...}`` names,
    if it is one of COHEN_ARCHS (their training snapshots record it; weights only are read)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        arch = obj.get("arch")
        if isinstance(arch, str) and arch in COHEN_ARCHS:
            return arch
    return None

