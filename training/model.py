"""A small transducer in the NeMo export layout: 8x conv subsampling + BiLSTM encoder, LSTM
prediction network, tanh joint; RNN-T loss (pure PyTorch) with an auxiliary CTC head; greedy decoding.

The encoder is exact under batching: padding frames are zeroed after every conv, and the backward
LSTM runs on each row reversed within its own length, so a padded batch row gives the same frames as
that audio alone (and it exports without packed sequences).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Sizes:
    features: int = 128
    conv_channels: int = 192
    lstm_hidden: int = 128  # per direction; the encoder width D is twice this
    lstm_layers: int = 2
    pred_hidden: int = 128
    pred_layers: int = 1
    joint_hidden: int = 192
    vocab_size: int = 57  # with the blank, which is last


SUBSAMPLING = 8  # feature frames per encoder frame: three stride-2 convs


def subsampled_length(length: torch.Tensor) -> torch.Tensor:
    """NeMo's floor((L + 2 * 1 - 3) / 2) + 1 for one stride-2 kernel-3 conv, as (L + 1) // 2."""
    return torch.div(length + 1, 2, rounding_mode="floor")


def encoded_length(length: torch.Tensor) -> torch.Tensor:
    """Encoder frames of `length` feature frames."""
    for _ in range(3):
        length = subsampled_length(length)
    return length


def _mask(x: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """x [B, C, T] with frames at or past `length` zeroed."""
    steps = torch.arange(x.shape[2], device=x.device)
    return x * (steps[None, :] < length[:, None]).unsqueeze(1).to(x.dtype)


def _reverse_within(x: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """x [B, T, C] with each row's first `length` frames reversed (an involution)."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    index = torch.where(steps < length[:, None], length[:, None] - 1 - steps, steps)
    return torch.gather(x, 1, index.unsqueeze(2).expand(-1, -1, x.shape[2]))


class Encoder(nn.Module):
    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        c = sizes.conv_channels
        self.convs = nn.ModuleList(
            [nn.Conv1d(cin, c, 3, stride=2, padding=1) for cin in (sizes.features, c, c)]
        )
        self.forward_lstms = nn.ModuleList()
        self.backward_lstms = nn.ModuleList()
        width = c
        for _ in range(sizes.lstm_layers):
            self.forward_lstms.append(nn.LSTM(width, sizes.lstm_hidden, batch_first=True))
            self.backward_lstms.append(nn.LSTM(width, sizes.lstm_hidden, batch_first=True))
            width = 2 * sizes.lstm_hidden
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(0.15)
        self.width = width

    def forward(self, audio_signal: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, F, T] features -> ([B, D, T'] frames, [B] lengths)."""
        x = _mask(audio_signal, length)
        for conv in self.convs:
            length = subsampled_length(length)
            x = _mask(F.relu(conv(x)), length)
        x = x.transpose(1, 2)  # [B, T', C]
        for forward_lstm, backward_lstm in zip(self.forward_lstms, self.backward_lstms, strict=True):
            ahead, _ = forward_lstm(x)
            behind, _ = backward_lstm(_reverse_within(x, length))
            x = self.dropout(torch.cat([ahead, _reverse_within(behind, length)], dim=2))
        x = self.norm(x).transpose(1, 2)
        return _mask(x, length), length


class Predictor(nn.Module):
    """Embedding (the blank is the zero padding index, used as start symbol) + LSTM."""

    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        self.blank = sizes.vocab_size - 1
        self.embed = nn.Embedding(sizes.vocab_size, sizes.pred_hidden, padding_idx=self.blank)
        self.lstm = nn.LSTM(sizes.pred_hidden, sizes.pred_hidden, sizes.pred_layers, batch_first=True)

    def forward(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out, state = self.lstm(self.embed(tokens), state)
        return out, state


class Joint(nn.Module):
    def __init__(self, sizes: Sizes, encoder_width: int) -> None:
        super().__init__()
        self.enc = nn.Linear(encoder_width, sizes.joint_hidden)
        self.pred = nn.Linear(sizes.pred_hidden, sizes.joint_hidden)
        self.out = nn.Linear(sizes.joint_hidden, sizes.vocab_size)

    def forward(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """enc [B, T, De], pred [B, U, Dp] -> logits [B, T, U, V]."""
        return self.out(torch.tanh(self.enc(enc).unsqueeze(2) + self.pred(pred).unsqueeze(1)))


class Transducer(nn.Module):
    def __init__(self, sizes: Sizes, encoder: nn.Module | None = None) -> None:
        """`encoder` (default: the BiLSTM `Encoder`) maps ([B, F, T], [B]) to ([B, D, T'], [B])."""
        super().__init__()
        self.sizes = sizes
        self.blank = sizes.vocab_size - 1
        self.encoder = encoder if encoder is not None else Encoder(sizes)
        self.predictor = Predictor(sizes)
        self.joint = Joint(sizes, self.encoder.width)
        self.ctc = nn.Linear(self.encoder.width, sizes.vocab_size)

    def losses(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean per-utterance RNN-T and CTC losses, and the encoder frames [B, D, T']; `targets` [B, U]
        padded with anything."""
        enc, enc_lengths = self.encoder(features, lengths)
        enc = enc.transpose(1, 2)  # [B, T', D]
        start = torch.full((targets.shape[0], 1), self.blank, dtype=torch.long)
        pred, _ = self.predictor(torch.cat([start, targets], dim=1))
        logits = self.joint(enc, pred)
        rnnt = rnnt_loss(logits, targets, enc_lengths, target_lengths, self.blank)
        ctc_logp = self.ctc(enc).log_softmax(-1).transpose(0, 1)
        ctc = F.ctc_loss(
            ctc_logp,
            targets,
            enc_lengths,
            target_lengths,
            blank=self.blank,
            reduction="none",
            zero_infinity=True,
        )
        return rnnt.mean(), ctc.mean(), enc.transpose(1, 2)

    def window_consistency(
        self, features: torch.Tensor, encoded: torch.Tensor, windows: list[tuple[int, int, int, int]]
    ) -> torch.Tensor:
        """Mean squared distance (summed over D) between the frames of a chunk encoded inside its own
        streaming window and the same frames of the whole utterance's encoding (a fixed target).

        `windows` holds (w0, c0, c1, w1) per row in encoder frames: chunk [c0, c1) inside window
        [w0, w1). The window's features are re-normalised per mel bin over the window, as the
        preprocessor does when the server encodes a stream's window; standardising is affine
        invariant, so standardising the utterance-normalised crop gives the same features.
        """
        crops = []
        for row, (w0, _, _, w1) in enumerate(windows):
            crop = features[row, :, SUBSAMPLING * w0 : SUBSAMPLING * w1]
            crops.append((crop - crop.mean(1, keepdim=True)) / (crop.std(1, keepdim=True) + 1e-5))
        lengths = torch.tensor([crop.shape[1] for crop in crops])
        batch = features.new_zeros(len(crops), features.shape[1], int(lengths.max()))
        for row, crop in enumerate(crops):
            batch[row, :, : crop.shape[1]] = crop
        windowed, _ = self.encoder(batch, lengths)
        distances = [
            ((windowed[row, :, c0 - w0 : c1 - w0] - encoded[row, :, c0:c1].detach()) ** 2).sum(0).mean()
            for row, (w0, c0, c1, _) in enumerate(windows)
        ]
        return torch.stack(distances).mean()

    @torch.no_grad()
    def greedy(self, features: torch.Tensor, length: int, max_symbols: int = 10) -> list[int]:
        """The spec's RNN-T greedy loop over one utterance's features [F, T]."""
        enc, enc_length = self.encoder(features[None], torch.tensor([length]))
        enc = enc[0].transpose(0, 1)  # [T', D]
        last = torch.tensor([[self.blank]])
        pred, state = self.predictor(last)
        tokens: list[int] = []
        for t in range(int(enc_length[0])):
            for _ in range(max_symbols):
                logits = self.joint(enc[t][None, None], pred)[0, 0, 0]
                token = int(logits.argmax())
                if token == self.blank:
                    break
                tokens.append(token)
                pred, state = self.predictor(torch.tensor([[token]]), state)
        return tokens


def rnnt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
) -> torch.Tensor:
    """Per-utterance RNN-T negative log-likelihood [B] (Graves 2012), by the forward variables.

    Along u the recursion alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] +
    emit[t, u-1]) is a log-semiring linear recurrence, solved per frame with a cumulative sum and
    `logcumsumexp`, so the Python loop runs over frames only.
    """
    logp = logits.log_softmax(-1)
    batch, frames, u1, _ = logp.shape
    blank_lp = logp[..., blank]  # [B, T, U+1]
    emit_lp = torch.gather(logp[:, :, :-1], 3, targets[:, None, :, None].expand(-1, frames, -1, 1)).squeeze(3)
    zeros = logp.new_zeros(batch, 1)
    alphas = []
    above = torch.cat([zeros, logp.new_full((batch, u1 - 1), -1e4)], dim=1)  # alpha[-1] + blank, for t = 0
    for t in range(frames):
        cum = torch.cat([zeros, emit_lp[:, t].cumsum(1)], dim=1)  # [B, U+1]
        alpha = cum + torch.logcumsumexp(above - cum, dim=1)
        alphas.append(alpha)
        above = alpha + blank_lp[:, t]
    alpha = torch.stack(alphas, dim=1)  # [B, T, U+1]
    rows = torch.arange(batch)
    last_t = logit_lengths - 1
    return -(alpha[rows, last_t, target_lengths] + blank_lp[rows, last_t, target_lengths])
