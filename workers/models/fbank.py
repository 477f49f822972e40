"""Kaldi-compatible log-mel filterbank as a few tensor operations, for any batch shape and device.

The same arithmetic as torchaudio's `compliance.kaldi.fbank` with funasr's settings (dither 0,
hamming window, snip_edges, DC removal, pre-emphasis 0.97, power spectrum, log floor at float32
eps), without its per-call set-up, so that both the CPU VAD and the GPU frontend can run it on
whole batches of frames.

On the CPU a long signal goes through in runs of `rows` frames: each run's frames, spectrum and power
(about 2 MB for 1,024 frames) stay in the core's cache instead of streaming a 60 s block's 25 MB through
memory. A run takes its pre-emphasis and its frames' means (float64 sums over hops of gcd(window, shift)
samples) from its own samples, so every frame gets the same bits whatever run it falls in.
"""

from __future__ import annotations

import math

import torch
from torchaudio.compliance import kaldi


class LogMel(torch.nn.Module):
    def __init__(self, n_mels: int = 80, sample_rate: int = 16000, frame_ms: float = 25.0, shift_ms: float = 10.0,
                 device: torch.device | str = "cpu", rows: int = 1024):
        super().__init__()
        if rows < 16:
            raise ValueError("rows: at least 16 frames per run")
        self.rows = rows
        self.win = int(sample_rate * frame_ms / 1000)
        self.shift = int(sample_rate * shift_ms / 1000)
        self.hop = math.gcd(self.win, self.shift)
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
        power spectrum of window * p. Pre-emphasis is taken on each run of the signal once, so every step
        below works on contiguous memory: p[j] = e[j] - 0.03 mean with e the pre-emphasised
        signal (e[0] = 0.03 f[0]).
        """
        n = self.count(x.shape[-1])
        if n == 0:
            return x.new_zeros(*x.shape[:-1], 0, self.mel.shape[1])
        if x.device.type != "cpu" or n < 2 * self.rows:
            return self._frames(x, 0, n)
        # runs of `rows` frames, the last one up to 2 x rows - 1: MKL multiplies a product of very few rows with
        # other kernels, whose last bits differ
        edges = list(range(0, n - self.rows + 1, self.rows)) + [n]
        out = x.new_empty(*x.shape[:-1], n, self.mel.shape[1])
        for a, b in zip(edges[:-1], edges[1:]):
            out[..., a:b, :] = self._frames(x, a, b)
        return out

    def _frames(self, x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """Log-mel of frames a..b-1 of the signal x. Everything is taken from the run's own samples, so each
        frame's value does not depend on the run it falls in."""
        m = b - a
        run = x[..., a * self.shift:(b - 1) * self.shift + self.win]
        # each frame's mean from sums over hops of gcd(window, shift) samples, in float64
        hops = run.unflatten(-1, (-1, self.hop)).sum(-1, dtype=torch.float64)
        mean = (hops.unfold(-1, self.win // self.hop, self.shift // self.hop).sum(-1) / self.win).float()
        emph = run[..., 1:] - 0.97 * run[..., :-1]
        frames = x.new_zeros(*x.shape[:-1], m, self.n_fft)
        frames[..., 1:self.win] = emph.unfold(-1, self.win - 1, self.shift)
        frames[..., 0] = 0.03 * run[..., :(m - 1) * self.shift + 1:self.shift]
        body = frames[..., : self.win]
        body -= 0.03 * mean[..., None]
        body *= self.window
        spectrum = torch.fft.rfft(frames)
        power = spectrum.real.square() + spectrum.imag.square()
        return torch.matmul(power, self.mel).clamp_min(self.eps).log()
