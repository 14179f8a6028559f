"""Benchmarks of the library and the commands, each its own command.

  python -m benchmarks.throughput        # images/s and FLOP/s against the matmul peak
  python -m benchmarks.time_to_result    # the default run, cold and warm, phase by phase
  python -m benchmarks.accelerator       # training, vmapped models, scoring, the grid

They measure ``jax_vae`` and ``experiments`` and report figures; nothing in
``experiments`` depends on them.
"""
