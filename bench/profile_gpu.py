"""Where the time goes: torch.profiler over one large batch of each model (eager), top kernels.

    python -m bench.profile_gpu --batch-seconds 3000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.common import utterances
from bench.gpu_bench import batches, ensure_models
from shared.logs import quiet_third_parties
from shared.models import registry
from workers.emotion import Emotion2vec
from workers.sensevoice import SenseVoice


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models-dir", type=Path, default=Path("/tmp/speechq-bench-models"))
    p.add_argument("--batch-seconds", type=float, default=3000.0)
    p.add_argument("--rows", type=int, default=18)
    p.add_argument("--engine", action="store_true",
                   help="the GPU worker's engine instead: host-side profile of one steady-state submit()")
    args = p.parse_args()
    if args.engine:
        engine_host_profile(args)
        return
    dirs = ensure_models(args.models_dir, "full")
    quiet_third_parties()
    wavs = utterances(256)
    group = [wavs[i] for i in batches(wavs, args.batch_seconds)[0]]
    dev = torch.device("cuda")
    models = {
        "SenseVoiceSmall": (SenseVoice(registry.load_automodel(dirs["sensevoice"], device="cuda"), dev, torch.bfloat16),
                            lambda m: m(group, ["auto"] * len(group), [True] * len(group))),
        "emotion2vec+ large 16+8": (Emotion2vec(registry.load_automodel(dirs["e2v-16+8"], device="cuda"), dev,
                                                torch.bfloat16), lambda m: m(group)),
    }
    audio = sum(len(w) for w in group) / 16000
    for name, (model, run) in models.items():
        run(model)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(model)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run(model)
            torch.cuda.synchronize()
        events = prof.key_averages()
        from torch.autograd import DeviceType

        gpu = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6
        print(f"\n## {name}: {len(group)} segments, {audio:.0f} s audio, wall {wall * 1000:.1f} ms "
              f"({audio / wall:,.0f}x), GPU busy {gpu * 1000:.1f} ms ({100 * gpu / wall:.0f}% of wall)")
        print(events.table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=60))


def engine_host_profile(args) -> None:
    """Where the host's time goes while it queues one batch (the device should never wait on it)."""
    from shared.config import Settings
    from workers.engine import Engine

    dirs = ensure_models(args.models_dir, "full")
    quiet_third_parties()
    engine = Engine(Settings(sensevoice_model_dir=dirs["sensevoice"], emotion2vec_model_dir=dirs["e2v-16+8"],
                             batch_seconds=args.batch_seconds))
    wavs = utterances(600, seed=5)
    groups = [[wavs[i] for i in g] for g in batches(wavs, args.batch_seconds)][:4]
    for g in groups:  # shapes met once
        engine.run(g, ["auto"] * len(g), [True] * len(g))
    flights = [engine.submit(g, ["auto"] * len(g), [True] * len(g)) for g in groups[:2]]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        flights.append(engine.submit(groups[2], ["auto"] * len(groups[2]), [True] * len(groups[2])))
        host = time.perf_counter() - t0
    for f in flights:
        f.results()
    print(f"\n## engine.submit of {sum(map(len, groups[2])) / 16000:.0f} s audio: {host * 1000:.1f} ms on the host")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
