"""Torsos shared by every policy: the Nature CNN (Mnih et al., 2015) and the 15-layer IMPALA
ResNet (Espeholt et al., 2018) for 84x84 frame stacks, and an MLP for vector observations.
Each has `output_dim`; `make_torso` builds one by its config name.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class NatureCNN(nn.Module):
    """Three conv layers and a 512-unit linear layer; uint8 frames are scaled to [0, 1]."""

    def __init__(self, in_channels: int = 4, hidden: int = 512, frame_size: int = 84):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, in_channels, frame_size, frame_size)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
        self.output_dim = hidden

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(obs.float() / 255.0))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ImpalaResNet(nn.Module):
    """The IMPALA 'deep' network: three stages of conv, max-pool and two residual blocks."""

    def __init__(self, in_channels: int = 4, channels=(16, 32, 32), hidden: int = 256,
                 frame_size: int = 84):
        super().__init__()
        stages, c_in = [], in_channels
        for c_out in channels:
            stages += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1),
                       _ResidualBlock(c_out), _ResidualBlock(c_out)]
            c_in = c_out
        self.stages = nn.Sequential(*stages, nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            flat = self.stages(torch.zeros(1, in_channels, frame_size, frame_size)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
        self.output_dim = hidden

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stages(obs.float() / 255.0))


class MLP(nn.Module):
    """Tanh MLP for low-dimensional vector observations (CartPole and friends)."""

    def __init__(self, in_dim: int, hidden=(64, 64)):
        super().__init__()
        layers, d = [], in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.Tanh()]
            d = h
        self.net = nn.Sequential(nn.Flatten(), *layers)
        self.output_dim = d

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float())


def make_torso(name: str, obs_shape: tuple[int, ...]) -> nn.Module:
    """`auto` follows the observation, as RLlib's catalog does: frames [C, H, W] get the
    Nature CNN, vectors an MLP."""
    if name == "auto":
        name = "nature" if len(obs_shape) == 3 else "mlp"
    if name == "nature":
        return NatureCNN(in_channels=obs_shape[0], frame_size=obs_shape[-1])
    if name == "resnet":
        return ImpalaResNet(in_channels=obs_shape[0], frame_size=obs_shape[-1])
    if name == "mlp":
        return MLP(int(math.prod(obs_shape)))
    raise ValueError(f"unknown model {name!r}; expected 'auto', 'nature', 'resnet' or 'mlp'")
