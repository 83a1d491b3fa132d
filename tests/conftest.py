"""Suite-wide settings: one torch thread.

The tests run tiny models and small tensors, where a second OpenMP thread only adds wake-ups, and
on a loaded 2-core machine spinning threads make them up to two orders of magnitude slower.
"""

# hypothesis is imported up front: when pytest's hypothesis plugin first imports it at the
# terminal summary, after py4j calls into a game JVM (tests of at2po.tasks.games), CPython 3.11.7
# fails to compile it ("SystemError: AST constructor recursion depth mismatch") and the run exits
# 1 although every test passed.
import hypothesis  # noqa: F401
import torch

torch.set_num_threads(1)
