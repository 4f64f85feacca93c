"""torch tests run one intra-op thread per process: the suite already runs one process per core
(``pytest -n auto``), and torch's thread pool on a busy 2-core machine made small tensor ops
~30x slower (measured: 100 digits steps took 12 s with 2 threads, 0.37 s with 1)."""

try:
    import torch
except ImportError:  # the tests here skip themselves
    torch = None

if torch is not None:
    torch.set_num_threads(1)
