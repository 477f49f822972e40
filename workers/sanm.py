"""SenseVoice's SAN-M encoder, run over funasr's own modules with fused attention.

Same weights and the same function as funasr's SenseVoiceEncoderSmall.forward in eval mode, but
attention goes through scaled_dot_product_attention with a key-padding mask (no (B, H, T, T)
score tensor in memory), and the whole forward is free of Python-side shape logic, so that
torch.compile can fuse it. The layers also run on a packed sequence (workers.packed): segments
end to end, attention in the padded layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.compiling import batch_dynamic
from workers.packed import Layout


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


def _attention(attn, x: torch.Tensor, keep: torch.Tensor, keys: torch.Tensor, shifted: bool,
               to_rows: torch.Tensor | None, to_packed: torch.Tensor | None) -> torch.Tensor:
    """x: (B, T, D) padded, or (1, N, D) packed (then `to_rows`/`to_packed` map between the packed
    sequence and the padded (B, T) layout that attention runs in; keys is (B, 1, 1, T) either way)."""
    qkv = attn.linear_q_k_v(x)
    v = qkv[..., 2 * attn.h * attn.d_k:]
    inputs = v * keep
    memory = (_fsmn(attn, inputs, shifted) + inputs) * keep
    b, t = keys.shape[0], keys.shape[-1]
    rows = (qkv if to_rows is None else qkv[0][to_rows]).reshape(b, t, 3, attn.h, attn.d_k)
    q, k, v = (z.transpose(1, 2) for z in rows.unbind(2))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys).transpose(1, 2).reshape(b, t, attn.h * attn.d_k)
    if to_packed is not None:
        out = out.reshape(b * t, -1)[to_packed][None]
    return attn.linear_out(out) + memory


def layer(block, x: torch.Tensor, keep: torch.Tensor, keys: torch.Tensor, shifted: bool,
          to_rows: torch.Tensor | None = None, to_packed: torch.Tensor | None = None) -> torch.Tensor:
    """One SAN-M encoder layer (funasr's EncoderLayerSANM.forward in eval mode), padded or packed."""
    attended = _attention(block.self_attn, block.norm1(x), keep, keys, shifted, to_rows, to_packed)
    x = x + attended if block.in_size == block.size else attended
    return x + block.feed_forward(block.norm2(x))


def encode(encoder, xs: torch.Tensor, lengths: torch.Tensor, shifted: bool = False, run=layer,
           layout: Layout | None = None) -> torch.Tensor:
    """(B, T, 560) features with the 4 query frames, valid lengths -> (B, T, 512), or with a
    `layout`, the packed (1, N, 512). `run` applies one layer (`layer`, or a compiled copy of it)."""
    valid = torch.arange(xs.shape[1], device=xs.device)[None, :] < lengths[:, None]
    keys = valid[:, None, None, :]
    scale = encoder.output_size() ** 0.5
    if layout is None:
        keep = valid[..., None].to(xs.dtype)
        xs = encoder.embed(xs * scale)
        batch_dynamic(xs, keep, keys)
        maps = (None, None)
    else:
        keep = layout.valid[None, :, None].to(xs.dtype)
        xs = layout.pack(xs)[None] * scale
        xs = xs + encoder.embed.encode(layout.positions[None], xs.shape[-1], xs.dtype)
        maps = (layout.to_rows, layout.to_packed)
    for block in encoder.encoders0:
        xs = run(block, xs, keep, keys, shifted, *maps)
    for block in encoder.encoders:
        xs = run(block, xs, keep, keys, shifted, *maps)
    xs = encoder.after_norm(xs)
    for block in encoder.tp_encoders:
        xs = run(block, xs, keep, keys, shifted, *maps)
    return encoder.tp_norm(xs)


def gap(encoder) -> int:
    """Unused frames needed between packed segments: the FSMN memory's reach to either side."""
    blocks = [*encoder.encoders0, *encoder.encoders, *encoder.tp_encoders]
    pads = [p for block in blocks for p in block.self_attn.pad_fn.padding]
    return max(pads) if pads else 0
