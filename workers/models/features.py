"""SenseVoice's frontend for a whole batch at once, on the GPU: Kaldi fbank, LFR, CMVN.

Computes what funasr's WavFrontend computes one utterance at a time (torchaudio's Kaldi fbank
with dither 0, hamming window, snip_edges; LFR m=7 n=6 with edge replication; CMVN from am.mvn),
as a handful of batched tensor operations with no host round trip.
"""

from __future__ import annotations

import torch

from workers.models.fbank import LogMel


class BatchFrontend(torch.nn.Module):
    def __init__(self, frontend, device: torch.device):
        super().__init__()
        self.logmel = LogMel(frontend.n_mels, frontend.fs, frontend.frame_length, frontend.frame_shift, device)
        self.win, self.shift = self.logmel.win, self.logmel.shift
        self.lfr_m, self.lfr_n = frontend.lfr_m, frontend.lfr_n
        self.scale = float(1 << 15) if getattr(frontend, "upsacle_samples", True) else 1.0
        cmvn = frontend.cmvn if frontend.cmvn is not None else torch.stack(
            [torch.zeros(self.out_dim(frontend)), torch.ones(self.out_dim(frontend))])
        self.register_buffer("cmvn", cmvn.float().to(device))

    @staticmethod
    def out_dim(frontend) -> int:
        return frontend.n_mels * frontend.lfr_m

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        n = torch.div(lengths - self.win, self.shift, rounding_mode="floor") + 1
        return torch.div(n.clamp_min(1) + self.lfr_n - 1, self.lfr_n, rounding_mode="floor")

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav (B, T) float32 at 16 kHz, zero-padded; lengths (B,). Returns (B, T_lfr, 560), T_lfr."""
        x = wav.float() * self.scale
        if x.shape[1] < self.win:
            x = torch.nn.functional.pad(x, (0, self.win - x.shape[1]))
        logmel = self.logmel(x)  # (B, F, n_mels)
        b, f, d = logmel.shape
        n_frames = (torch.div(lengths - self.win, self.shift, rounding_mode="floor") + 1).clamp(1, f)
        n_lfr = torch.div(n_frames + self.lfr_n - 1, self.lfr_n, rounding_mode="floor")
        t_lfr = (f + self.lfr_n - 1) // self.lfr_n
        idx = (torch.arange(t_lfr, device=x.device)[:, None] * self.lfr_n
               + torch.arange(self.lfr_m, device=x.device)[None, :] - (self.lfr_m - 1) // 2)
        idx = torch.minimum(idx[None].clamp_min(0), (n_frames - 1)[:, None, None])  # (B, T_lfr, m)
        flat = idx + (torch.arange(b, device=x.device) * f)[:, None, None]
        lfr = logmel.reshape(b * f, d)[flat.reshape(-1)].reshape(b, t_lfr, self.lfr_m * d)
        lfr = (lfr + self.cmvn[0]) * self.cmvn[1]
        valid = torch.arange(t_lfr, device=x.device)[None, :] < n_lfr[:, None]
        return lfr * valid[..., None], n_lfr
