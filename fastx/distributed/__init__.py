"""Tensor parallelism on torch.distributed: process groups, sharded layers, rank 0's runner and the workers.

`LLM(model, tensor_parallel_size=N)` is the entry point (fastx.engine.llm); this package holds the
layers the models build through (layers.py), the groups (group.py), the launcher (launch.py),
rank 0's runner (runner.py) and the worker loop (worker.py). The package root imports nothing:
the models import layers.py without pulling in the engine.
"""
