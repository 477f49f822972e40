"""The GPU side, queue "gpu": one worker process per device runs batches through the engine (both
models, optimised as the runtime options say) and stores their results."""
