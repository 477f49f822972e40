"""The GPU runtime: validated options, compilation, CUDA graphs, staging audio onto the device.

The engine (workers.gpu.engine) applies these to the models; the models (workers.models) are
batched forwards and know nothing of how they are compiled or replayed.
"""
