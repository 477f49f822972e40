"""SenseVoice's SAN-M encoder, run over funasr's own modules with fused attention.

Same weights and the same function as funasr's SenseVoiceEncoderSmall.forward in eval mode, but
attention goes through scaled_dot_product_attention with a key-padding mask (no (B, H, T, T)
score tensor in memory), and the whole forward is free of Python-side shape logic, so that
torch.compile can fuse it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.compiling import batch_dynamic


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


def _attention(attn, x: torch.Tensor, keep: torch.Tensor, keys: torch.Tensor, shifted: bool) -> torch.Tensor:
    b, t, _ = x.shape
    q, k, v = torch.split(attn.linear_q_k_v(x), attn.h * attn.d_k, dim=-1)
    inputs = v * keep
    memory = (_fsmn(attn, inputs, shifted) + inputs) * keep
    heads = lambda z: z.reshape(b, t, attn.h, attn.d_k).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=keys)
    return attn.linear_out(out.transpose(1, 2).reshape(b, t, attn.h * attn.d_k)) + memory


def layer(block, x: torch.Tensor, keep: torch.Tensor, keys: torch.Tensor, shifted: bool) -> torch.Tensor:
    """One SAN-M encoder layer (funasr's EncoderLayerSANM.forward in eval mode)."""
    attended = _attention(block.self_attn, block.norm1(x), keep, keys, shifted)
    x = x + attended if block.in_size == block.size else attended
    return x + block.feed_forward(block.norm2(x))


def encode(encoder, xs: torch.Tensor, lengths: torch.Tensor, shifted: bool = False, run=layer) -> torch.Tensor:
    """(B, T, 560) features with the 4 query frames, valid lengths -> (B, T, 512). `run` applies one
    layer (`layer`, or a compiled copy of it)."""
    valid = torch.arange(xs.shape[1], device=xs.device)[None, :] < lengths[:, None]
    keep = valid[..., None].to(xs.dtype)
    keys = valid[:, None, None, :]
    xs = encoder.embed(xs * encoder.output_size() ** 0.5)
    batch_dynamic(xs, keep, keys)
    for block in encoder.encoders0:
        xs = run(block, xs, keep, keys, shifted)
    for block in encoder.encoders:
        xs = run(block, xs, keep, keys, shifted)
    xs = encoder.after_norm(xs)
    for block in encoder.tp_encoders:
        xs = run(block, xs, keep, keys, shifted)
    return encoder.tp_norm(xs)
