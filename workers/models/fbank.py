"""Kaldi-compatible log-mel filterbank as a few tensor operations, for any batch shape and device.

The same arithmetic as torchaudio's `compliance.kaldi.fbank` with funasr's settings (dither 0,
hamming window, snip_edges, DC removal, pre-emphasis 0.97, power spectrum, log floor at float32
eps), without its per-call set-up, so that both the CPU VAD and the GPU frontend can run it on
whole batches of frames.
"""

from __future__ import annotations

import torch
from torchaudio.compliance import kaldi


class LogMel(torch.nn.Module):
    def __init__(self, n_mels: int = 80, sample_rate: int = 16000, frame_ms: float = 25.0, shift_ms: float = 10.0,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.win = int(sample_rate * frame_ms / 1000)
        self.shift = int(sample_rate * shift_ms / 1000)
        self.n_fft = 1 << (self.win - 1).bit_length()
        mel, _ = kaldi.get_mel_banks(n_mels, self.n_fft, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
        self.register_buffer("mel", torch.nn.functional.pad(mel, (0, 1)).T.contiguous().to(device))
        window = torch.hamming_window(self.win, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float64)
        self.register_buffer("window", window.float().to(device))
        self.eps = torch.finfo(torch.float32).eps

    def count(self, samples: int) -> int:
        """Frames in `samples` samples (snip_edges: only whole frames)."""
        return 0 if samples < self.win else (samples - self.win) // self.shift + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., samples) already scaled as funasr scales it -> (..., frames, n_mels).

        Per frame f: y = f - mean(f); p[0] = y[0] - 0.97 y[0], p[j] = y[j] - 0.97 y[j-1];
        power spectrum of window * p. Pre-emphasis is taken on the signal once, so every step
        below works on contiguous memory: p[j] = e[j] - 0.03 mean with e the pre-emphasised
        signal (e[0] = 0.03 f[0]).
        """
        n = self.count(x.shape[-1])
        starts = torch.arange(n, device=x.device) * self.shift
        emph = x[..., 1:] - 0.97 * x[..., :-1]
        frames = x.new_zeros(*x.shape[:-1], n, self.n_fft)
        frames[..., 1:self.win] = emph.unfold(-1, self.win - 1, self.shift)[..., :n, :]
        frames[..., 0] = 0.03 * x[..., starts]
        total = torch.nn.functional.pad(x.double().cumsum(-1), (1, 0))
        mean = ((total[..., starts + self.win] - total[..., starts]) / self.win).float()
        body = frames[..., : self.win]
        body -= 0.03 * mean[..., None]
        body *= self.window
        spectrum = torch.fft.rfft(frames)
        power = spectrum.real.square() + spectrum.imag.square()
        return torch.matmul(power, self.mel).clamp_min(self.eps).log()
