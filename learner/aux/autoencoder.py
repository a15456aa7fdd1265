"""Pixel reconstruction (paper 001's auxiliary set): decode x_t from z_t, loss the mean
squared error per step over every input value (uint8 frames scaled to [0, 1] like the torso
sees them).

For 84x84 frames the decoder mirrors the Nature CNN (a linear layer to 64x7x7, then transposed
convolutions 7 -> 9 -> 20 -> 84); other frame sizes are resized to the input at the end; vector
observations get an MLP decoder.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from learner.aux.base import AuxBatch, AuxTerm, mlp_head


class _FrameDecoder(nn.Module):
    def __init__(self, feature_dim: int, obs_shape: tuple[int, ...]):
        super().__init__()
        channels, self.size = obs_shape[0], tuple(obs_shape[1:])
        self.fc = nn.Sequential(nn.Linear(feature_dim, 64 * 7 * 7), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 8, stride=4),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.deconv(self.fc(z).view(-1, 64, 7, 7))
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


class Autoencoder(AuxTerm):
    def __init__(self, name: str, weight: float, feature_dim: int, obs_shape, hidden: int):
        super().__init__(name, weight)
        self.obs_shape = tuple(obs_shape)
        if len(self.obs_shape) == 3:
            self.decoder = _FrameDecoder(feature_dim, self.obs_shape)
        else:
            self.decoder = mlp_head(feature_dim, hidden, math.prod(self.obs_shape))

    def per_step(self, batch: AuxBatch):
        T, B = batch.actions.shape
        obs = batch.obs[:-1]
        target = obs.float() / 255.0 if obs.dtype == torch.uint8 else obs.float()
        decoded = self.decoder(batch.z[:-1].reshape(T * B, -1)).view(T, B, *self.obs_shape)
        loss = (decoded - target.to(decoded.dtype)).pow(2).flatten(2).mean(-1)
        return loss, torch.ones_like(loss)
