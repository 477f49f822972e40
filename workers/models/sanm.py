"""SenseVoice's SAN-M encoder, run over funasr's own modules with fused attention.

Same weights and the same function as funasr's SenseVoiceEncoderSmall.forward in eval mode, but
attention goes through scaled_dot_product_attention with a key-padding mask (no (B, H, T, T)
score tensor in memory), and the whole forward is free of Python-side shape logic, so that
torch.compile can fuse it. The layers also run on a packed sequence (workers.models.layout): segments
end to end, attention in the padded layout or, varlen, on the packed sequence itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.models.layout import Layout
from workers.runtime.compiling import batch_dynamic


def _fsmn(attn, inputs: torch.Tensor, shifted: bool) -> torch.Tensor:
    """The FSMN memory block, a depthwise convolution over time.

    With `shifted`, written as a sum of shifted copies so that torch.compile fuses it into one
    kernel (eager PyTorch sends the depthwise conv to a slow generic kernel).
    """
    if not shifted:
        return attn.fsmn_block(attn.pad_fn(inputs.transpose(1, 2))).transpose(1, 2)
    left, right = attn.pad_fn.padding
    weight = attn.fsmn_block.weight[:, 0, :]  # (D, K)
    padded = F.pad(inputs, (0, 0, left, right))
    t = inputs.shape[1]
    out = padded[:, 0:t] * weight[:, 0]
    for k in range(1, weight.shape[1]):
        out = out + padded[:, k:k + t] * weight[:, k]
    return out


def _varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqs: torch.Tensor, longest: int) -> torch.Tensor:
    """Attention within each sequence [seqs[i], seqs[i+1]) of a packed (N, H, D) q, k, v.
    On CUDA FlashAttention's variable-length kernel; elsewhere (tests) a block-diagonal mask."""
    if q.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q, k, v, seqs, seqs, longest, longest)
    frames = torch.arange(q.shape[0], device=q.device, dtype=seqs.dtype)
    which = torch.searchsorted(seqs, frames, right=True)
    same = which[:, None] == which[None, :]
    return F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                          attn_mask=same).transpose(0, 1)


def _attention(attn, x: torch.Tensor, keep: torch.Tensor, shifted: bool, keys: torch.Tensor | None,
               to_rows: torch.Tensor | None, to_packed: torch.Tensor | None,
               seqs: torch.Tensor | None, longest: int) -> torch.Tensor:
    """x: (B, T, D) padded (keys: the (B, 1, 1, T) key mask), or (1, N, D) packed: then either
    `to_rows`/`to_packed` map between the packed sequence and the padded (B, T) layout that attention
    runs in, or attention runs on the packed sequence within the bounds `seqs` (varlen)."""
    qkv = attn.linear_q_k_v(x)
    v = qkv[..., 2 * attn.h * attn.d_k:]
    inputs = v * keep
    memory = (_fsmn(attn, inputs, shifted) + inputs) * keep
    # Compiled, the FSMN taps otherwise fuse into the next LayerNorm's reduction, which then loads
    # each of them twice; ending the compiled region here stores the memory once (BENCHMARKS.md).
    # Replayed from CUDA graphs the extra region costs no host time. Eager, this is a no-op.
    torch._dynamo.graph_break()
    if seqs is not None:
        n = qkv.shape[1]
        q, k, v = qkv[0].reshape(n, 3, attn.h, attn.d_k).unbind(1)
        out = _varlen(q, k, v, seqs, longest).reshape(1, n, attn.h * attn.d_k)
        return attn.linear_out(out) + memory
    b, t = keys.shape[0], keys.shape[-1]
    rows = (qkv if to_rows is None else qkv[0][to_rows]).reshape(b, t, 3, attn.h, attn.d_k)
    q, k, v = (z.transpose(1, 2) for z in rows.unbind(2))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys).transpose(1, 2).reshape(b, t, attn.h * attn.d_k)
    if to_packed is not None:
        out = out.reshape(b * t, -1)[to_packed][None]
    return attn.linear_out(out) + memory


def layer(block, x: torch.Tensor, keep: torch.Tensor, shifted: bool, keys: torch.Tensor | None = None,
          to_rows: torch.Tensor | None = None, to_packed: torch.Tensor | None = None,
          seqs: torch.Tensor | None = None, longest: int = 0) -> torch.Tensor:
    """One SAN-M encoder layer (funasr's EncoderLayerSANM.forward in eval mode), padded or packed."""
    attended = _attention(block.self_attn, block.norm1(x), keep, shifted, keys, to_rows, to_packed, seqs, longest)
    x = x + attended if block.in_size == block.size else attended
    return x + block.feed_forward(block.norm2(x))


def encode(encoder, xs: torch.Tensor, lengths: torch.Tensor, shifted: bool = False, run=layer,
           layout: Layout | None = None) -> torch.Tensor:
    """(B, T, 560) features with the 4 query frames, valid lengths -> (B, T, 512), or with a
    `layout`, the packed (1, N, 512). `run` applies one layer (`layer`, or a compiled copy of it)."""
    valid = torch.arange(xs.shape[1], device=xs.device)[None, :] < lengths[:, None]
    keys = valid[:, None, None, :]
    if layout is None:
        keep = valid[..., None].to(xs.dtype)
        xs = xs * encoder.output_size() ** 0.5
        xs = xs + sinusoid(torch.arange(1, xs.shape[1] + 1, device=xs.device)[None], xs.shape[-1], xs.dtype)
        batch_dynamic(xs, keep, keys)
        return layers(encoder, xs, keep, shifted, run, keys=keys)
    attend = layout.attention()
    if layout.seqs is None:
        attend["keys"] = keys
    return layers(encoder, embed_packed(encoder, xs, layout), layout.valid, shifted, run, **attend)


def embed_packed(encoder, xs: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, T, 560) padded features -> (N, 560) packed, scaled, positions added (each segment's from 1)."""
    xs = layout.pack(xs) * encoder.output_size() ** 0.5
    return xs + sinusoid(layout.positions[None], xs.shape[-1], xs.dtype)[0]


def sinusoid(positions: torch.Tensor, depth: int, dtype: torch.dtype) -> torch.Tensor:
    """funasr's SinusoidalPositionEncoder.encode, step for step, but with its constant made on the
    device: funasr's torch.tensor(..., device=) is a blocking copy that makes the host wait for the
    device's whole queue on every batch."""
    device = positions.device
    increment = torch.log(torch.full((1,), 10000, dtype=dtype, device=device)) / (depth / 2 - 1)
    inv_timescales = torch.exp(torch.arange(depth / 2, device=device).type(dtype) * (-increment))
    scaled = positions.type(dtype)[..., None] * inv_timescales
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1).type(dtype)


def layers(encoder, xs: torch.Tensor, keep: torch.Tensor, shifted: bool, run=layer, **attend) -> torch.Tensor:
    """The encoder's layers and norms. Padded: xs (B, T, 560), keep (B, T, 1). Packed: xs (N, 560)
    and keep the (N,) valid frames; returns (1, N, 512). `attend` as workers.sanm.layer takes it."""
    if keep.dim() == 1:
        xs, keep = xs[None], keep[None, :, None].to(xs.dtype)
    for block in encoder.encoders0:
        xs = run(block, xs, keep, shifted, **attend)
    for block in encoder.encoders:
        xs = run(block, xs, keep, shifted, **attend)
    xs = encoder.after_norm(xs)
    for block in encoder.tp_encoders:
        xs = run(block, xs, keep, shifted, **attend)
    return encoder.tp_norm(xs)


def gap(encoder) -> int:
    """Unused frames needed between packed segments: the FSMN memory's reach to either side."""
    blocks = [*encoder.encoders0, *encoder.encoders, *encoder.tp_encoders]
    pads = [p for block in blocks for p in block.self_attn.pad_fn.padding]
    return max(pads) if pads else 0
