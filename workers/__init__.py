"""Celery workers, one package per role: `ingest` (the CPU side: archives, decode, VAD, batching) and
`gpu` (the GPU side: the engine and its tasks), beside `models` (the batched forwards) and `runtime`
(how they run on a GPU)."""
