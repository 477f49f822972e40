"""Compiled FlexAttention alone, at emotion2vec's sizes: which ingredient makes it fault?

Each variant runs in its own process (an illegal memory access poisons the CUDA context) and
compares against SDPA with the equivalent dense bias. Usage: python -m bench.flex_repro
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

VARIANTS = {  # name: (score_mod, block mask, mask heads, inference_mode, N)
    "plain": (False, False, None, True, 760),
    "mask": (False, True, None, True, 760),
    "alibi": (True, False, None, True, 760),
    "both": (True, True, None, True, 760),
    "both-no-grad": (True, True, None, False, 760),
    "both-heads": (True, True, 16, True, 760),
    "both-768": (True, True, None, True, 768),
}


def child(name: str, batch: int) -> None:
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    alibi, masked, heads_in_mask, inference, n = VARIANTS[name]
    torch.manual_seed(0)
    b, h, d = batch, 16, 64
    dev = "cuda"
    q, k, v = (torch.randn(b, h, n, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
    lengths = torch.randint(n // 2, n + 1, (b,), device=dev)
    lengths[0] = n
    slopes = torch.linspace(0.01, 0.5, h, device=dev)
    padding = torch.arange(n, device=dev)[None, :] >= lengths[:, None]

    def score_mod(score, bi, hi, qi, ki):
        return score - slopes[hi] * (qi - ki).abs().to(torch.float32)

    lookup = torch.nn.functional.pad(padding, (0, -n % 128), value=True)

    def keep(bi, hi, qi, ki):
        return ~lookup[bi, ki]

    ctx = torch.inference_mode() if inference else torch.no_grad()
    with ctx:
        mask = create_block_mask(keep, b, heads_in_mask, n, n, device=dev) if masked else None
        fn = torch.compile(flex_attention, dynamic=False)
        out = fn(q, k, v, score_mod=score_mod if alibi else None, block_mask=mask)
        torch.cuda.synchronize()
        r = 16  # the reference on the first rows only: a dense fp32 bias for all would be 7 GB
        pos = torch.arange(n, device=dev)
        bias = torch.zeros(r, h, n, n, device=dev)
        if alibi:
            bias = bias - slopes[None, :, None, None] * (pos[:, None] - pos[None, :]).abs()
        if masked:
            bias = bias.masked_fill(padding[:r, None, None, :], float("-inf"))
        ref = torch.nn.functional.scaled_dot_product_attention(q[:r].float(), k[:r].float(), v[:r].float(),
                                                               attn_mask=bias)
        print(f"{name}: ok, max |flex - sdpa| {float((out[:r].float() - ref).abs().max()):.3e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--child", default="")
    args = p.parse_args()
    if args.child:
        child(args.child, args.batch)
        return

    def run(name: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "bench.flex_repro", "--child", name, "--batch", str(args.batch)],
                              capture_output=True, text=True, timeout=400)
        if proc.returncode == 0:
            return proc.stdout.strip()
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-3:]
        return f"{name}: FAILED (exit {proc.returncode}): " + " / ".join(tail)

    with ThreadPoolExecutor(4) as pool:
        for line in pool.map(run, args.variants.split(",")):
            print(line, flush=True)


if __name__ == "__main__":
    main()
