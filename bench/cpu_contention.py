"""Does matrix arithmetic itself slow down when every core of a host runs it at once?

N single-threaded processes each multiply FSMN-VAD-sized matrices ((12000, 400) x (400, 250),
torch fp32 and bf16, and numpy fp32) for a few seconds and report GFLOP/s, so that the ingest
benchmark's scaling can be told apart from the host's. Usage: python -m bench.cpu_contention 1 8 16
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CHILD = """
import json, time, numpy as np, torch
torch.set_num_threads(1)
out = {}
for name, dtype in (("torch fp32", torch.float32), ("torch bf16", torch.bfloat16), ("numpy fp32", None)):
    if dtype is None:
        a, b = np.random.rand(12000, 400).astype(np.float32), np.random.rand(400, 250).astype(np.float32)
        mm = lambda: a @ b
    else:
        a, b = torch.rand(12000, 400, dtype=dtype), torch.rand(400, 250, dtype=dtype)
        mm = lambda: a @ b
    mm(); n = 0; t0 = time.perf_counter()
    while time.perf_counter() - t0 < SECONDS:
        mm(); n += 1
    out[name] = n * 2 * 12000 * 400 * 250 / (time.perf_counter() - t0) / 1e9
print(json.dumps(out))
"""


def main() -> None:
    counts = [int(x) for x in sys.argv[1:]] or [1, os.cpu_count() or 1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for n in counts:
        procs = [subprocess.Popen([sys.executable, "-c", CHILD.replace("SECONDS", "4")], stdout=subprocess.PIPE,
                                  text=True, env=env) for _ in range(n)]
        runs = [json.loads(p.communicate()[0]) for p in procs]
        cells = ", ".join(f"{k} {sum(r[k] for r in runs) / n:.0f}" for k in runs[0])
        print(f"{n:3d} processes: GFLOP/s per process: {cells}", flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main()
