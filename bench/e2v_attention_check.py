"""emotion2vec+ large on the GPU: compiled FlexAttention vs the eager dense-bias path, batch by batch.

Runs a few length-bucketed batches of different shapes through both and prints the largest score
difference and the time per batch; the first failure is printed whole (CUDA_LAUNCH_BLOCKING=1
helps locate it). Usage: python -m bench.e2v_attention_check [--blocks 16+8] [--batches 4]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import utterances
from bench.gpu_bench import batches, ensure_models
from shared.models import registry
from workers.emotion import Emotion2vec

log = logging.getLogger("bench.e2v")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models-dir", type=Path, default=Path("/tmp/speechq-bench-models"))
    p.add_argument("--blocks", default="16+8", choices=["16+8", "8+4"])
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-seconds", type=float, default=3000.0)
    p.add_argument("--static", action="store_true",
                   help="compile with static shapes instead (the longest utterance padded to a 5 s multiple)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    dirs = ensure_models(args.models_dir, "full")
    wavs = utterances(256)
    am = registry.load_automodel(dirs[f"e2v-{args.blocks}"], device="cuda")
    dev = torch.device("cuda")
    dense = Emotion2vec(am, dev, torch.bfloat16, attention="dense")
    if args.static:
        flex = Emotion2vec(am, dev, torch.bfloat16, attention="flex")
        flex._encode = torch.compile(flex._encode, dynamic=False)
    else:
        flex = Emotion2vec(am, dev, torch.bfloat16, compile=True, attention="flex")
    groups = batches(wavs, args.batch_seconds)
    for g in groups[:args.batches]:
        ws = [wavs[i] for i in g]
        if args.static:  # one source length per 5 s bucket: pad the longest utterance with silence
            longest = max(range(len(ws)), key=lambda i: len(ws[i]))
            ws[longest] = np.pad(ws[longest], (0, -len(ws[longest]) % 80000))
        ref = dense.scores(ws)
        t0 = time.perf_counter()
        got = flex.scores(ws)
        torch.cuda.synchronize()
        log.info("batch of %d (longest %.1f s): max |flex - dense| %.2e, %.2f s (first call compiles)", len(ws),
                 max(map(len, ws)) / 16000, float((got - ref).abs().max()), time.perf_counter() - t0)
        for name, model in (("dense eager", dense), ("flex compiled", flex)):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.scores(ws)
            torch.cuda.synchronize()
            log.info("  %s: %.0f× real time on this batch", name, sum(map(len, ws)) / 16000 / (time.perf_counter() - t0))


if __name__ == "__main__":
    main()
