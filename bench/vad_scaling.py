"""How FSMN-VAD ingest scales with processes on one host (one thread each).

Each process resamples bench/.audio/call.flac (a FLAC copy of the synthesised call, not in the
repository: write it with shared.samples) to 16 kHz, tiles it to ~10 min and runs both channels
through the batched VAD. Usage: python bench/vad_scaling.py 1 4 8 16
"""
import os, subprocess, sys, time
code = """
import numpy as np, soundfile as sf, time, torch, soxr
from shared import vad
from shared.config import Settings
a, r = sf.read('bench/.audio/call.flac', dtype='float32', always_2d=True)
a = soxr.resample(a, r, 16000).T.copy()
a = np.tile(a, (1, 26))
d = Settings().vad_model_dir
vad.segments_many([[a[0][:16000]]], d, 30000)
t = time.perf_counter(); vad.segments_many([[a[0]], [a[1]]], d, 30000); print(a.size / 16000 / (time.perf_counter() - t))
"""
base = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": os.environ["PATH"], "PYTHONPATH": os.environ["PYTHONPATH"]}
for label, extra in (("default", {}),):
    for n in [int(x) for x in sys.argv[1:]] or (1, 4, 16):
        ps = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**base, **extra}) for _ in range(n)]
        xs = [float(p.communicate()[0].split()[-1]) for p in ps]
        print(f"{label:8s} {n:2d} procs: x real time per process {sum(xs)/n:.0f}, all together {sum(xs):.0f}", flush=True)
