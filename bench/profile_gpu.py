"""Where the time goes: torch.profiler over one large batch of each model (eager), top kernels.

    python -m bench.profile_gpu --batch-seconds 3000
    python -m bench.profile_gpu --sensevoice --calls bench/.audio --call-minutes 30

--sensevoice: for each way of running SenseVoice (compiled layers with padded or varlen attention,
CUDA graphs), on gpu_bench's mix: host time to stage the audio, to queue every batch and to decode
the results, wall time, GPU busy time and the top kernels.
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
from workers import sanm
from workers.emotion import Emotion2vec
from workers.sensevoice import SenseVoice


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models-dir", type=Path, default=Path("/tmp/speechq-bench-models"))
    p.add_argument("--batch-seconds", type=float, default=3000.0)
    p.add_argument("--rows", type=int, default=18)
    p.add_argument("--engine", action="store_true",
                   help="the GPU worker's engine instead: host-side profile of one steady-state submit()")
    p.add_argument("--sensevoice", action="store_true", help="SenseVoice's compiled variants on the mix")
    p.add_argument("--variants", default="", help="names from SV_VARIANTS, separated by ; (default: all)")
    p.add_argument("--calls", type=Path, default=None)
    p.add_argument("--call-minutes", type=float, default=0.0)
    args = p.parse_args()
    if args.engine:
        engine_host_profile(args)
        return
    if args.sensevoice:
        sensevoice_variants(args)
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
        events, gpu = device_profile(lambda: run(model))
        print(f"\n## {name}: {len(group)} segments, {audio:.0f} s audio, wall {wall * 1000:.1f} ms "
              f"({audio / wall:,.0f}x), GPU busy {gpu * 1000:.1f} ms ({100 * gpu / wall:.0f}% of wall)")
        print(events.table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=60))


SV_VARIANTS = {
    "compiled layers, padded attention": {"attention": "padded", "compile": "layers"},
    "compiled layers, varlen attention": {"attention": "varlen", "compile": "layers"},
    "compiled layers, varlen attention, CUDA graphs": {"attention": "varlen", "compile": "layers", "graphs": True},
    "compiled layers, varlen attention, CUDA graphs, FSMN apart": {"attention": "varlen", "compile": "layers",
                                                                   "graphs": True, "apart": True},
    "the same, ReLU in the GEMM epilogue": {"attention": "varlen", "compile": "layers", "graphs": True,
                                           "apart": True, "fused_relu": True},
}


def sensevoice_variants(args) -> None:
    from bench.gpu_bench import registry_vad_dir, vad_cut
    from workers.staging import pad_batch

    dirs = ensure_models(args.models_dir, "full")
    quiet_third_parties()
    wavs = utterances(256) + vad_cut(args.calls, registry_vad_dir(), args.call_minutes)
    groups = [[wavs[i] for i in g] for g in batches(wavs, args.batch_seconds)]
    audio = sum(map(len, wavs)) / 16000
    dev = torch.device("cuda")
    am = registry.load_automodel(dirs["sensevoice"], device="cuda")
    print(f"\n{len(wavs)} segments, {audio:.0f} s, {len(groups)} batches of <= {args.batch_seconds:.0f} padded s")
    only = set(filter(None, args.variants.split(";")))
    for name, kwargs in SV_VARIANTS.items():
        if only and name not in only:
            continue
        kwargs = dict(kwargs)
        apart = kwargs.pop("apart", False)
        sanm.FUSED_RELU = kwargs.pop("fused_relu", False)
        model = SenseVoice(am, dev, torch.bfloat16, **kwargs)
        model.apart = apart
        torch._dynamo.reset()  # each variant traces its own layer graphs

        def launch_all(staged):
            return [model.launch(wav, lengths, host, ["auto"] * len(host), [True] * len(host))
                    for (wav, lengths), host in staged]

        def stage_all():
            return [(pad_batch(ws, dev), torch.tensor([len(w) for w in ws])) for ws in groups]

        for _ in range(2):  # compiles, captures
            [model.decode(p.rows()) for p in launch_all(stage_all())]
        print(f"\n{name}: queueing the batches {syncs(lambda: launch_all(stage_all()))}")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        staged = stage_all()
        t1 = time.perf_counter()
        pending = launch_all(staged)
        t2 = time.perf_counter()
        rows = [p.rows() for p in pending]
        t3 = time.perf_counter()
        for r in rows:
            model.decode(r)
        t4 = time.perf_counter()
        events, gpu = device_profile(lambda: launch_all(staged))
        print(f"\n## {name}: {audio / (t4 - t0):,.0f}x overall; stage {1e3 * (t1 - t0):.1f} ms, queue "
              f"{1e3 * (t2 - t1):.1f} ms, until the last tokens {1e3 * (t3 - t1):.1f} ms ({audio / (t3 - t1):,.0f}x), "
              f"decode {1e3 * (t4 - t3):.1f} ms; GPU busy {1e3 * gpu:.1f} ms ({audio / gpu:,.0f}x)")
        print(events.table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=60))
        del model
        torch.cuda.empty_cache()


def syncs(fn) -> str:
    """Whether fn makes the host wait for the device (torch's sync debug mode raises where it does)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return "never waits for the device"
    except RuntimeError as exc:
        return f"waits for the device: {str(exc).splitlines()[0][:200]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def device_profile(fn):
    """torch.profiler's per-kernel averages over fn (run to completion), and the GPU's busy seconds."""
    from torch.autograd import DeviceType

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    return events, sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6


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
    first = groups[0]
    print(f"\nengine.submit {syncs(lambda: engine.submit(first, ['auto'] * len(first), [True] * len(first)))}")
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
