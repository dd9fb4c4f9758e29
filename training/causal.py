"""The causal, cache-aware encoder of the streaming demo model (`default-streaming`).

Nothing in it looks ahead, so encoding a stream chunk by chunk with the caches gives exactly the
frames of encoding it whole, at any chunk size: the chunk size is a latency/throughput choice of the
server, not a property of the model. Its streaming step has NeMo's cache-aware export contract:

* `processed_signal` [B, F, P + 8n]: unnormalised log-mel frames of n encoder frames (80 ms each),
  with the last P = 7 mel frames of the previous chunk prepended (the pre-encode cache; zeros at the
  start of a stream), `processed_signal_length` [B] (P + the valid mel frames; frames past it count
  as zeros);
* `cache_last_channel` [L, B, 2, D]: per layer the unidirectional LSTM's (h, c) (C = 2),
* `cache_last_time` [L, B, D, K]: per layer the last K inputs of its causal depthwise conv,
* `cache_last_channel_len` [B]: encoder frames seen so far (carried, not used by the computation);
* outputs `encoded` [B, D, n], `encoded_len` [B] = ceil((length - P) / 8) and the `_next` caches.

Layers: a fixed per-bin standardisation (training-set statistics, inside the graph, since the
streaming features are not normalised), three valid stride-2 kernel-3 convs (8x subsampling; P = 7
is their receptive field beyond the chunk), a linear map to D, then L blocks of
`u = x + GELU(causal depthwise conv(x))`, `x = u + LSTM(u)`, and a LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import Sizes

PRE_ENCODE_CACHE = 7  # mel frames: the subsampling convs' receptive field beyond their chunk
SUBSAMPLING = 8
LAYERS = 3  # the default of `--streaming-layers`
TIME_CACHE = 4  # K: the depthwise conv has kernel K + 1
WIDTH = 256  # D, as the BiLSTM encoder's, so that the decoder/joint has the same shape


def encoded_frames(length: torch.Tensor) -> torch.Tensor:
    """Encoder frames of `length` mel frames: every started group of 8 gives one."""
    return torch.div(length + SUBSAMPLING - 1, SUBSAMPLING, rounding_mode="floor")


class CausalEncoder(nn.Module):
    def __init__(self, sizes: Sizes, layers: int = LAYERS) -> None:
        super().__init__()
        c = sizes.conv_channels
        self.layers = layers
        self.register_buffer("mean", torch.zeros(sizes.features, 1))
        self.register_buffer("inv_std", torch.ones(sizes.features, 1))
        self.convs = nn.ModuleList([nn.Conv1d(cin, c, 3, stride=2) for cin in (sizes.features, c, c)])
        self.project = nn.Linear(c, WIDTH)
        self.time_convs = nn.ModuleList(
            [nn.Conv1d(WIDTH, WIDTH, TIME_CACHE + 1, groups=WIDTH) for _ in range(layers)]
        )
        self.lstms = nn.ModuleList([nn.LSTM(WIDTH, WIDTH, batch_first=True) for _ in range(layers)])
        self.norm = nn.LayerNorm(WIDTH)
        self.dropout = nn.Dropout(0.15)
        self.width = WIDTH

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-mel-bin standardisation from the training features ([F] each)."""
        self.mean.copy_(mean[:, None])
        self.inv_std.copy_(1.0 / (std[:, None] + 1e-5))

    def initial_caches(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.zeros(self.layers, batch, 2, WIDTH),
            torch.zeros(self.layers, batch, WIDTH, TIME_CACHE),
            torch.zeros(batch, dtype=torch.long),
        )

    def step(
        self,
        processed_signal: torch.Tensor,
        processed_signal_length: torch.Tensor,
        cache_last_channel: torch.Tensor,
        cache_last_time: torch.Tensor,
        cache_last_channel_len: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One chunk (see the module docstring); the export's forward."""
        steps = torch.arange(processed_signal.shape[2], device=processed_signal.device)
        valid = (steps[None, :] < processed_signal_length[:, None]).unsqueeze(1)
        x = (processed_signal * valid.to(processed_signal.dtype) - self.mean) * self.inv_std
        for conv in self.convs:
            x = F.relu(conv(x))
        x = self.project(x.transpose(1, 2))  # [B, n, D]
        channel_next, time_next = [], []
        for layer, (time_conv, lstm) in enumerate(zip(self.time_convs, self.lstms, strict=True)):
            history = torch.cat([cache_last_time[layer], x.transpose(1, 2)], dim=2)  # [B, D, K + n]
            time_next.append(history[:, :, history.shape[2] - TIME_CACHE :])
            u = x + F.gelu(time_conv(history).transpose(1, 2))
            state = cache_last_channel[layer].transpose(0, 1)  # [2, B, D]
            out, (h, c) = lstm(u, (state[0:1].contiguous(), state[1:2].contiguous()))
            channel_next.append(torch.cat([h, c], dim=0).transpose(0, 1))  # [B, 2, D]
            x = u + self.dropout(out)
        encoded_len = encoded_frames(processed_signal_length - PRE_ENCODE_CACHE).clamp(min=0)
        encoded = self.norm(x).transpose(1, 2)  # [B, D, n]
        frames = torch.arange(encoded.shape[2], device=encoded.device)
        encoded = encoded * (frames[None, :] < encoded_len[:, None]).unsqueeze(1).to(encoded.dtype)
        return (
            encoded,
            encoded_len,
            torch.stack(channel_next),
            torch.stack(time_next),
            cache_last_channel_len + encoded_len,
        )

    def forward(self, features: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole utterances [B, F, T] -> ([B, D, T'] frames, [B] lengths): the streaming step with
        fresh caches over the whole signal, padded to whole encoder frames."""
        padded = encoded_frames(torch.tensor(features.shape[2])) * SUBSAMPLING
        signal = F.pad(features, (PRE_ENCODE_CACHE, int(padded) - features.shape[2]))
        encoded, encoded_len, *_ = self.step(
            signal, length + PRE_ENCODE_CACHE, *self.initial_caches(features.shape[0])
        )
        return encoded, encoded_len
