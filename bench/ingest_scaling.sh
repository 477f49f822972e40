#!/usr/bin/env bash
# Ingest throughput on a many-core host (the GPU machine, through the device tool), with what the
# host is: cores, threads per core, cgroup CPU quota, and each process's threads while N run.
#   bash bench/ingest_scaling.sh OUTDIR "4 8 12 16"
# Needs bench/.audio/call.flac (any recording soundfile reads; the GPU machine has no ffmpeg).
set -uo pipefail
out=${1:-/tmp/ingest-scaling}; counts=${2:-"4 8 12 16"}; mkdir -p "$out"
src=bench/.audio/call.flac
{
  echo "nproc $(nproc)"; lscpu | grep -E "^(Model name|Thread|Core|Socket|NUMA node\(s\)|CPU\(s\))"
  echo "cgroup cpu.max: $(cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo n/a)"
  echo "flags: $(grep -o -w -E 'amx_bf16|avx512_bf16|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' ')"
} 2>&1
for precision in mixed fp32; do
  python -m bench.ingest_bench --source $src --minutes 10 --long-hours 0 --automodel --precision $precision \
    --out "$out/ingest-1proc-$precision.json"
done
for n in $counts; do
  ( sleep 12; { cat /proc/loadavg; cat /sys/fs/cgroup/cpu.stat 2>/dev/null;
      echo "== $n processes"; ps -eLo pid,tid,psr,pcpu,stat,comm --sort=-pcpu | head -40; } >> "$out/threads.txt" ) &
  python -m bench.ingest_bench --source $src --minutes 60 --long-hours 0 --workers "$n" --precision mixed \
    --out "$out/ingest-${n}proc-mixed.json"
  wait
done
