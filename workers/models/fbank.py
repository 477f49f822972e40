"""Kaldi-compatible log-mel filterbank as a few tensor operations, for any batch shape and device.

The same arithmetic as torchaudio's `compliance.kaldi.fbank` with funasr's settings (dither 0,
hamming window, snip_edges, DC removal, pre-emphasis 0.97, power spectrum, log floor at float32
eps), without its per-call set-up, so that both the CPU VAD and the GPU frontend can run it on
whole batches of frames.

On the CPU a long signal goes through in runs of `rows` frames: each run's frames, spectrum and power
(about 2 MB for 1,024 frames) stay in the core's cache instead of streaming a 60 s block's 25 MB through
memory; every frame is computed as before, so the result is the same to the bit.
"""

from __future__ import annotations

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
        total = torch.nn.functional.pad(x.double().cumsum(-1), (1, 0))
        mean = ((total[..., starts + self.win] - total[..., starts]) / self.win).float()
        emph = x[..., 1:] - 0.97 * x[..., :-1]
        if n == 0:
            return x.new_zeros(*x.shape[:-1], 0, self.mel.shape[1])
        if x.device.type != "cpu" or n < 2 * self.rows:
            return self._frames(x, emph, mean, 0, n)
        # runs of `rows` frames, the last one up to 2 x rows - 1: MKL multiplies a product of very few rows with
        # other kernels, whose last bits differ
        edges = list(range(0, n - self.rows + 1, self.rows)) + [n]
        out = x.new_empty(*x.shape[:-1], n, self.mel.shape[1])
        for a, b in zip(edges[:-1], edges[1:]):
            out[..., a:b, :] = self._frames(x, emph, mean[..., a:b], a, b)
        return out

    def _frames(self, x: torch.Tensor, emph: torch.Tensor, mean: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """Log-mel of frames a..b-1, given the signal, its pre-emphasis and those frames' means."""
        m = b - a
        frames = x.new_zeros(*x.shape[:-1], m, self.n_fft)
        frames[..., 1:self.win] = emph[..., a * self.shift:].unfold(-1, self.win - 1, self.shift)[..., :m, :]
        frames[..., 0] = 0.03 * x[..., a * self.shift:(b - 1) * self.shift + 1:self.shift]
        body = frames[..., : self.win]
        body -= 0.03 * mean[..., None]
        body *= self.window
        spectrum = torch.fft.rfft(frames)
        power = spectrum.real.square() + spectrum.imag.square()
        return torch.matmul(power, self.mel).clamp_min(self.eps).log()
