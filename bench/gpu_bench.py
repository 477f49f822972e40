"""GPU benchmark: funasr AutoModel vs speechq's batched forwards, same audio, process and GPU.

Prints a markdown table and writes one JSON object per measured system. Random weights at full
size (written by speechq in the released layout); they say nothing of accuracy, everything of speed.

    python -m bench.gpu_bench --out bench/results/gpu-$(date +%F).json

The cost of word timings (a job option: workers.models.alignment on the timed segments): the GPU worker's
engine alone, every segment timed and none, and the host seconds spent aligning:

    python -m bench.gpu_bench --only engine --word-timings both --out bench/results/gpu-timings.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import Record, save, table, utterances
from workers.ingest.lengths import Item, by_length
from shared.models import random_init, registry
from workers.gpu.engine import optimise_emotion2vec, optimise_sensevoice
from workers.models.emotion2vec import Emotion2vec
from workers.models.sensevoice import SenseVoice
from workers.runtime.options import Options
from workers.runtime.staging import pad_batch

log = logging.getLogger("bench.gpu")


def ensure_models(root: Path, size: str) -> dict[str, Path]:
    dirs = {"sensevoice": root / "SenseVoiceSmall", "e2v-16+8": root / "emotion2vec_16_8",
            "e2v-8+4": root / "emotion2vec_8_4"}
    if not (dirs["sensevoice"] / "model.pt").exists():
        random_init.write_sensevoice(dirs["sensevoice"], size)
    if not (dirs["e2v-16+8"] / "model.pt").exists():
        random_init.write_emotion2vec(dirs["e2v-16+8"], size)
    if not (dirs["e2v-8+4"] / "model.pt").exists():
        random_init.write_emotion2vec(dirs["e2v-8+4"], size, depth=8 if size == "full" else 1,
                                      prenet_depth=4 if size == "full" else 1)
    return dirs


def sensevoice(am, device, options: Options) -> SenseVoice:
    """SenseVoice as the engine builds it under `options`."""
    model = SenseVoice(am, device, options.torch_dtype, packed=options.packed)
    optimise_sensevoice(model, options)
    return model


def emotion2vec(am, device, options: Options) -> Emotion2vec:
    model = Emotion2vec(am, device, options.torch_dtype)
    optimise_emotion2vec(model, options)
    return model


def batches(wavs: list[np.ndarray], budget_s: float) -> list[list[int]]:
    items = [Item(str(i), len(w) / 16000) for i, w in enumerate(wavs)]
    packed, _ = by_length(items, budget_s, max_items=1024, flush=True)
    return [[int(it.id) for it in b] for b in packed]


def vad_cut(calls: Path | None, vad_dir: Path, minutes: float = 0.0) -> list[np.ndarray]:
    """Speech segments of every channel of every call in `calls` (any libsndfile format and rate),
    each call tiled to `minutes` first when given, cut by speechq's VAD (≤ 30 s each)."""
    if calls is None:
        return []
    import soundfile as sf
    import soxr

    from workers.ingest.vad import segments

    out = []
    for path in sorted(p for p in calls.iterdir() if p.suffix in (".wav", ".flac")):
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        if rate != 16000:
            audio = soxr.resample(audio, rate, 16000).astype(np.float32)
        if minutes:
            audio = np.resize(audio, (int(minutes * 60 * 16000), audio.shape[1]))
        for ch in audio.T:
            ch = np.ascontiguousarray(ch)
            for s, e in segments(ch, vad_dir, 30000):
                out.append(ch[s * 16:e * 16].copy())
    return out


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device("cuda")
        self.gpu = torch.cuda.get_device_name(0)
        self.records: list[Record] = []
        self.sync = torch.cuda.synchronize

    def measure(self, system: str, model: str, wavs, run, gflop_per_s: float | None = None,
                baseline: float | None = None, notes: str = "", repeat: int = 1) -> Record:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        seconds = sum(len(w) for w in wavs) / 16000
        walls = []
        for _ in range(repeat):
            self.sync()
            start = time.perf_counter()
            run()
            self.sync()
            walls.append(time.perf_counter() - start)
        wall = min(walls)
        xrt = seconds / wall
        rec = Record(system=system, model=model, audio_seconds=seconds, wall_seconds=wall, x_realtime=xrt,
                     peak_gpu_mem_gb=torch.cuda.max_memory_allocated() / 2**30, gpu=self.gpu, notes=notes,
                     ratio_to_automodel=xrt / baseline if baseline else None,
                     arithmetic_fraction=xrt * gflop_per_s / (self.args.peak_tflops * 1e3) if gflop_per_s else None)
        log.info("%s %s: %.0f s audio in %.2f s = %.0f× real time, peak %.1f GiB", system, model, seconds, wall,
                 xrt, rec.peak_gpu_mem_gb)
        self.records.append(rec)
        if self.args.out:  # partial results survive a time-out
            save(self.records, self.args.out)
        return rec


def gflops_per_audio_second(fn, wavs) -> float:
    with FlopCounterMode(display=False) as counter:
        fn(wavs)
    return counter.get_total_flops() / 1e9 / (sum(len(w) for w in wavs) / 16000)


def fidelity(dirs, wavs, device) -> dict:
    """Full-size check on the GPU: ours vs funasr's own inference, fp32 and bf16."""
    out = {}
    am = registry.load_automodel(dirs["sensevoice"], device=str(device))
    fp32 = SenseVoice(am, device, torch.float32)
    bf16 = SenseVoice(am, device, torch.bfloat16)
    worst32 = worst16 = 0.0
    same_tokens = True
    lp32, lens = fp32.logits(wavs, ["auto"] * len(wavs), [True] * len(wavs))
    lp16, _ = bf16.logits(wavs, ["auto"] * len(wavs), [True] * len(wavs))
    # the worker's way: compiled layers, varlen attention, the FSMN apart (as the CUDA graphs replay them)
    lpc, _ = sensevoice(am, device, Options()).logits(wavs, ["auto"] * len(wavs), [True] * len(wavs))
    worstc = 0.0
    for i, w in enumerate(wavs):
        captured = {}
        hook = am.model.ctc.ctc_lo.register_forward_hook(lambda m, a, o: captured.__setitem__("x", o))
        am.model.inference([torch.from_numpy(w)], key=["k"], tokenizer=am.kwargs["tokenizer"],
                           frontend=am.kwargs["frontend"], device=str(device), language="auto", use_itn=True)
        hook.remove()
        ref = torch.log_softmax(captured["x"][0].float(), dim=-1)
        n = int(lens[i])
        scale = ref.abs().max()
        worst32 = max(worst32, float((lp32[i, :n] - ref).abs().max() / scale))
        worst16 = max(worst16, float((lp16[i, :n] - ref).abs().max() / scale))
        worstc = max(worstc, float((lpc[i, :n] - ref).abs().max() / scale))
        same_tokens &= bool(torch.equal(lp32[i, :n].argmax(-1), ref.argmax(-1)))
    out["sensevoice"] = {"fp32_max_rel": worst32, "bf16_max_rel": worst16, "bf16_compiled_varlen_max_rel": worstc,
                         "fp32_same_tokens": same_tokens}
    del am, fp32, bf16
    am = registry.load_automodel(dirs["e2v-16+8"], device=str(device))
    ours32 = Emotion2vec(am, device, torch.float32).scores(wavs).cpu().numpy()
    ours16 = Emotion2vec(am, device, torch.bfloat16).scores(wavs).cpu().numpy()
    keep = Emotion2vec(am, device).keep
    ref = np.array([np.asarray(am.generate(input=w, extract_embedding=False, disable_pbar=True)[0]["scores"])[keep]
                    for w in wavs])
    out["emotion2vec"] = {"fp32_max_abs": float(np.abs(ours32 - ref).max()),
                          "bf16_max_abs": float(np.abs(ours16 - ref).max())}
    torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models-dir", type=Path, default=Path("/tmp/speechq-bench-models"))
    p.add_argument("--size", default="full", choices=["tiny", "full"])
    p.add_argument("--utterances", type=int, default=256)
    p.add_argument("--calls", type=Path, default=None, help="folder of WAV/FLAC calls to cut with the VAD")
    p.add_argument("--call-minutes", type=float, default=0.0, help="tile each call to this length first")
    p.add_argument("--b1-subset", type=int, default=64, help="utterances for AutoModel at batch_size=1")
    p.add_argument("--batch-seconds", type=float, default=1200.0, help="ours: the worker's default budget")
    p.add_argument("--peak-tflops", type=float, default=790.0)
    p.add_argument("--skip", default="eager-e2v", help="comma-separated system names to skip")
    p.add_argument("--only", default="all", choices=["all", "sensevoice", "emotion2vec", "engine"],
                   help="run one model's systems, or only the GPU worker's engine (the whole set outlasts one "
                        "10-minute device call)")
    p.add_argument("--word-timings", default="off", choices=["off", "on", "both"],
                   help="the engine's runs: no segment timed, every segment timed (as jobs with word_timings), or "
                        "both, to measure their cost")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from shared.logs import quiet_third_parties

    skip = set(filter(None, args.skip.split(",")))
    torch.backends.cuda.matmul.allow_tf32 = False
    dirs = ensure_models(args.models_dir, args.size)
    wavs = utterances(args.utterances) + vad_cut(args.calls, registry_vad_dir(), args.call_minutes)
    quiet_third_parties()
    logging.getLogger("bench").setLevel(logging.INFO)
    bench = Bench(args)
    dev = bench.device
    log.info("%d segments, %.0f s of audio on %s", len(wavs), sum(map(len, wavs)) / 16000, bench.gpu)

    if args.only == "engine":
        engine_runs(bench, dirs, wavs, args, None)
        finish(bench, {}, args)
        return
    fid = {} if "fidelity" in skip else fidelity(dirs, wavs[:8], dev)
    log.info("fidelity: %s", fid)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".fidelity.json").write_text(json.dumps(fid, indent=2) + "\n")

    if args.only == "emotion2vec":
        skip |= {"automodel-sv", "compile-sv"}
    if args.only == "sensevoice":
        skip |= {"emotion2vec"}
    # funasr AutoModel, as its README runs it (batch_size=1) and batched.
    am = registry.load_automodel(dirs["sensevoice"], device="cuda")
    am.generate(input=wavs[:2], batch_size=2, language="auto", use_itn=True, disable_pbar=True)
    sub = wavs[:args.b1_subset]
    b1 = bench.measure("funasr AutoModel batch_size=1", "SenseVoiceSmall", sub,
                       lambda: am.generate(input=sub, batch_size=1, language="auto", use_itn=True, disable_pbar=True))
    best_am = b1.x_realtime
    for bs in (32, 64):
        if f"automodel-b{bs}" in skip or "automodel-sv" in skip:
            continue
        r = bench.measure(f"funasr AutoModel batch_size={bs}", "SenseVoiceSmall", wavs,
                          lambda bs=bs: am.generate(input=wavs, batch_size=bs, language="auto", use_itn=True,
                                                    disable_pbar=True), baseline=b1.x_realtime)
        best_am = max(best_am, r.x_realtime)

    groups = [[wavs[i] for i in g] for g in batches(wavs, args.batch_seconds)]
    sv_am = registry.load_automodel(dirs["sensevoice"], device="cuda")

    def run_sv(model):  # as the worker runs batches: all queued, then collected
        pending = []
        for ws in groups:
            wav, lengths = pad_batch(ws, dev)
            pending.append(model.launch(wav, lengths, torch.tensor([len(w) for w in ws]), ["auto"] * len(ws),
                                        [True] * len(ws)))
        for p in pending:
            model.decode(p.rows())

    padded = SenseVoice(sv_am, dev, torch.bfloat16, packed=False)
    sv_flops = gflops_per_audio_second(lambda ws: padded.token_ids(ws, ["auto"] * len(ws), [True] * len(ws)),
                                       groups[0])
    log.info("SenseVoice: %.2f GFLOP per audio second (padded batch)", sv_flops)
    note = f"batches of ≤{args.batch_seconds:.0f} padded s"
    # name, skip key, options (None: the padded model above); compiled ones are built when their
    # turn comes, their compile time (and graph captures) excluded
    systems = [("speechq batched bf16, padded, eager", "eager-padded", None),
               ("speechq batched bf16, packed varlen, compiled layers, CUDA graphs (the worker's options)", "graphs",
                Options()),
               ("speechq batched bf16, packed varlen, compiled layers", "compile-varlen", Options(cuda_graphs=False))]
    reference = np.concatenate(padded.token_ids(groups[0], ["auto"] * len(groups[0]), [True] * len(groups[0])))
    for name, key, options in systems:
        if key in skip or (options is not None and {"compile", "compile-sv"} & skip):
            continue
        t0 = time.perf_counter()
        model = padded if options is None else sensevoice(sv_am, dev, options)
        run_sv(model)
        notes = note + (f"; {time.perf_counter() - t0:.0f} s to compile, excluded" if options else "")
        rows = np.concatenate(model.token_ids(groups[0], ["auto"] * len(groups[0]), [True] * len(groups[0])))
        notes += f"; {100 * np.mean(rows == reference):.2f} % of frames get the padded eager batch's token"
        bench.measure(name, "SenseVoiceSmall", wavs, lambda m=model: run_sv(m), sv_flops, baseline=b1.x_realtime,
                      notes=notes, repeat=2)
        if model is not padded:
            del model
        torch.cuda.empty_cache()
    del systems

    if "emotion2vec" in skip:
        finish(bench, fid, args)
        return
    e_flops = {}
    for key in ("e2v-16+8", "e2v-8+4"):
        if key in skip:
            continue
        e_am = registry.load_automodel(dirs[key], device="cuda")
        label = f"emotion2vec+ large ({key[4:]} blocks)"
        base = None
        if key == "e2v-16+8" and "automodel-e2v" not in skip:
            e_am.generate(input=wavs[:2], extract_embedding=False, disable_pbar=True)
            base = bench.measure("funasr AutoModel", label, wavs,
                                 lambda: e_am.generate(input=wavs, batch_size=32, extract_embedding=False,
                                                       disable_pbar=True)).x_realtime

        def run_e(model):
            pending = [model.launch(*pad_batch(ws, dev), torch.tensor([len(w) for w in ws])) for ws in groups]
            for p in pending:
                p.results()

        eager = Emotion2vec(e_am, dev, torch.bfloat16)
        e_flops[key] = flops = gflops_per_audio_second(eager.scores, groups[0])
        log.info("%s: %.2f GFLOP per audio second", label, flops)
        reference = eager.scores(groups[0])
        if "eager-e2v" not in skip:  # its (B, 512, 3,200 per s) front-end tensors need ~70 GiB at 3,000 s batches
            run_e(eager)
            bench.measure("speechq batched bf16, eager", label, wavs, lambda m=eager: run_e(m), flops, baseline=base,
                          repeat=2)
        if "compile" in skip:
            continue
        del eager
        torch.cuda.empty_cache()
        t0 = time.perf_counter()
        comp = emotion2vec(e_am, dev, Options())
        run_e(comp)
        took = time.perf_counter() - t0
        diff = float((comp.scores(groups[0]) - reference).abs().max())
        bench.measure("speechq batched bf16, compiled layers", label, wavs, lambda m=comp: run_e(m), flops,
                      baseline=base, repeat=2, notes=f"compile time ({took:.0f} s) excluded; "
                                                     f"scores vs eager: max diff {diff:.1e}")
        del comp

    if "e2v-16+8" not in e_flops or "both" in skip:
        finish(bench, fid, args)
        return
    engine_runs(bench, dirs, wavs, args, sv_flops + e_flops["e2v-16+8"])
    finish(bench, fid, args)


def engine_runs(bench: Bench, dirs, wavs, args, gflop_per_s: float | None) -> None:
    """The GPU worker's engine on every segment, as the worker runs batches (all queued, then collected), with
    word timings off and/or on (`--word-timings`); the host seconds in the alignment are counted apart."""
    from shared.config import Settings
    from workers.gpu.engine import Engine
    from workers.models import alignment

    dev = bench.device
    groups = [[wavs[i] for i in g] for g in batches(wavs, args.batch_seconds)]
    t0 = time.perf_counter()
    engine = Engine(Options.from_settings(Settings(batch_seconds=args.batch_seconds), dev), dirs["sensevoice"],
                    dirs["e2v-16+8"], dev)
    log.info("GPU worker engine ready in %.1f s", time.perf_counter() - t0)
    aligning = [0.0]
    align = alignment.align

    def timed_align(*a, **k):
        start = time.perf_counter()
        try:
            return align(*a, **k)
        finally:
            aligning[0] += time.perf_counter() - start

    alignment.align = timed_align
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.word_timings]
    for timed in modes:
        def run_both(timed=timed):
            flights = [engine.submit(ws, ["auto"] * len(ws), [True] * len(ws), [timed] * len(ws)) for ws in groups]
            for f in flights:
                f.results()

        run_both()
        aligning[0] = 0.0
        rec = bench.measure(f"speechq both models on every segment (the GPU worker's engine), word timings "
                            f"{'on' if timed else 'off'}", "SenseVoiceSmall + emotion2vec+ large (16+8)", wavs,
                            run_both, gflop_per_s, repeat=2,
                            notes="workers.gpu.engine.Engine with the default options (packed, compiled layers, "
                                  "CUDA graphs); audio staged once for both models")
        if timed:
            rec.notes += f"; alignment on the host: {aligning[0] / 2:.2f} s a run"
            log.info("alignment: %.2f s of host time a run", aligning[0] / 2)
    alignment.align = align


def finish(bench, fid, args) -> None:
    print(table(bench.records))
    print("\nfidelity at full size on this GPU:", json.dumps(fid))
    if args.out:
        save(bench.records, args.out)


def registry_vad_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "shared" / "assets" / "fsmn-vad"


if __name__ == "__main__":
    main()
