"""How to compile the GPU forwards: eager, whole forward or each layer, dynamic or static lengths.

Side by side on one GPU, same weights (random, full size), for each model and mode:
compile time (first pass), × real time on one fixed bucket (B segments of exactly L seconds) and on
the benchmark mix (256 utterances of 3–15 s in ≤ --batch-seconds padded batches), peak memory.

    python -m bench.compile_modes --models sv,e2v --modes eager,layers-dynamic,layers-static
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import commit, utterances
from bench.gpu_bench import batches, ensure_models, registry_vad_dir, vad_cut
from shared.logs import quiet_third_parties
from shared.models import registry
from workers.emotion import Emotion2vec
from workers.sensevoice import SenseVoice
from workers.staging import pad_batch

log = logging.getLogger("bench.compile")
MODES = {  # name: (compile scope, dynamic, bucket seconds); a "-flex" suffix: emotion2vec's FlexAttention
    "eager": ("off", True, 0.0),
    "model-dynamic": ("model", True, 0.0),
    "layers-dynamic": ("layers", True, 0.0),
    "layers-static": ("layers", False, 1.0),
    "model-static": ("model", False, 1.0),
}


def build(name: str, am, mode: str, dev):
    attention = "flex" if mode.endswith("-flex") else "dense"
    scope, dynamic, bucket = MODES[mode.removesuffix("-flex")]
    if name == "sv":
        model = SenseVoice(am, dev, torch.bfloat16, compile=scope, dynamic=dynamic, bucket_seconds=bucket)
        return lambda ws: model.token_ids(ws, ["auto"] * len(ws), [True] * len(ws))
    model = Emotion2vec(am, dev, torch.bfloat16, compile=scope, dynamic=dynamic, bucket_seconds=bucket,
                        attention=attention)
    return model.scores


def timed(fn, repeat: int) -> float:
    walls = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
    return min(walls)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models-dir", type=Path, default=Path("/tmp/speechq-bench-models"))
    p.add_argument("--models", default="sv,e2v")
    p.add_argument("--modes", default="eager,layers-dynamic,layers-static")
    p.add_argument("--bucket", default="200x15", help="fixed bucket: segments x seconds")
    p.add_argument("--batch-seconds", type=float, default=3000.0)
    p.add_argument("--no-mix", action="store_true", help="fixed bucket only")
    p.add_argument("--profile", default="", help="model:mode to profile on the fixed bucket, e.g. sv:layers-static")
    p.add_argument("--sdpa", default="", help="emotion2vec attention backends to compare on the fixed bucket "
                   "(eager, dense bias), e.g. efficient,cudnn; with --align lengths, e.g. 8,64")
    p.add_argument("--align", default="8")
    p.add_argument("--calls", type=Path, default=None, help="add VAD-cut segments of these calls to the mix")
    p.add_argument("--call-minutes", type=float, default=0.0)
    p.add_argument("--e2v-splits", default="", help="emotion2vec (compiled layers) on the mix with these "
                   "length-run settings, ratio:min_seconds or none, e.g. none,0.8:300,0.7:600")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    dirs = ensure_models(args.models_dir, "full")
    quiet_third_parties()
    dev = torch.device("cuda")
    n, seconds = args.bucket.split("x")
    length = int(float(seconds) * 16000)
    fixed = [np.resize(w, length) for w in utterances(int(n), seed=1)]
    wavs = utterances(256) + vad_cut(args.calls, registry_vad_dir(), args.call_minutes)
    groups = [[wavs[i] for i in g] for g in batches(wavs, args.batch_seconds)]
    mix_seconds = sum(map(len, wavs)) / 16000
    rows = []
    for name in args.models.split(","):
        am = registry.load_automodel(dirs["sensevoice" if name == "sv" else "e2v-16+8"], device="cuda")
        for mode in args.modes.split(","):
            torch._dynamo.reset()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            run = build(name, am, mode, dev)
            row = {"model": name, "mode": mode, "gpu": torch.cuda.get_device_name(0), "commit": commit()}
            try:
                row["compile_fixed_s"] = timed(lambda: run(fixed), 1)
                if name == "e2v" and mode != "eager":  # the scores of a compiled mode against eager's
                    eager = build(name, am, "eager", dev)
                    row["max_diff_vs_eager"] = float((run(fixed[:16]) - eager(fixed[:16])).abs().max())
                    del eager
                row["fixed_x"] = len(fixed) * length / 16000 / timed(lambda: run(fixed), 3)
                if not args.no_mix and not mode.startswith("model-static"):
                    row["compile_mix_s"] = timed(lambda: [run(g) for g in groups], 1)
                    row["mix_x"] = mix_seconds / timed(lambda: [run(g) for g in groups], 2)
                if args.profile == f"{name}:{mode}":
                    profile(lambda: run(fixed))
            except Exception as exc:  # noqa: BLE001 - report the mode, go on with the next
                row["error"] = str(exc).splitlines()[0][:300]
                log.exception("%s %s failed", name, mode)
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            log.info("%s", row)
            rows.append(row)
            del run
    if args.e2v_splits:
        rows += e2v_splits(args, dirs, dev, groups, mix_seconds)
    if args.sdpa:
        rows += sdpa_backends(args, dirs, dev, fixed, length)
    print(f"\n| model | mode | compile (fixed) s | fixed {args.bucket} × | compile (mix) s | mix × | peak GiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['mode']} | {r.get('compile_fixed_s', 0):.1f} | {r.get('fixed_x', 0):,.0f} | "
              f"{r.get('compile_mix_s', 0):.1f} | {r.get('mix_x', 0):,.0f} | {r['peak_gib']:.1f} |"
              + (f" error: {r['error']}" if "error" in r else ""))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


def e2v_splits(args, dirs, dev, groups, mix_seconds) -> list[dict]:
    am = registry.load_automodel(dirs["e2v-16+8"], device="cuda")
    model = Emotion2vec(am, dev, torch.bfloat16, compile="layers")
    staged = [(pad_batch(ws, dev), torch.tensor([len(w) for w in ws])) for ws in groups]
    rows = []
    for setting in args.e2v_splits.split(","):
        if setting != "none":
            ratio, seconds = setting.split(":")
            model.split_ratio, model.split_min = float(ratio), int(float(seconds) * 16000)

        def run():
            pending = [model.launch(wav, lengths, None if setting == "none" else host)
                       for (wav, lengths), host in staged]
            for p in pending:
                p.results()

        torch.cuda.reset_peak_memory_stats()
        row = {"model": "e2v", "mode": f"layers-dynamic runs={setting}", "compile_mix_s": timed(run, 1)}
        row["mix_x"] = mix_seconds / timed(run, 3)
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        log.info("%s", row)
        rows.append(row)
    return rows


def sdpa_backends(args, dirs, dev, fixed, length) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    am = registry.load_automodel(dirs["e2v-16+8"], device="cuda")
    model = Emotion2vec(am, dev, torch.bfloat16)
    rows = []
    for backend in args.sdpa.split(","):
        for align in map(int, args.align.split(",")):
            model.align = align
            torch.cuda.reset_peak_memory_stats()
            row = {"model": "e2v", "mode": f"eager sdpa={backend} align={align}"}
            try:
                with sdpa_kernel(getattr(SDPBackend, backend.upper() + ("_ATTENTION" if backend != "math" else ""))):
                    row["fixed_x"] = len(fixed) * length / 16000 / timed(lambda: model.scores(fixed), 3)
            except Exception as exc:  # noqa: BLE001
                row["error"] = str(exc).splitlines()[0][:200]
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            log.info("%s", row)
            rows.append(row)
    return rows


def profile(fn) -> None:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e3
    print(f"\nGPU busy {busy:.1f} ms")
    print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))


if __name__ == "__main__":
    main()
