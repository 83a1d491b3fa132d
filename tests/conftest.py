"""Suite-wide settings: one torch thread.

The tests run tiny models and small tensors, where a second OpenMP thread only adds wake-ups, and
on a loaded 2-core machine spinning threads make them up to two orders of magnitude slower.
"""

import torch

torch.set_num_threads(1)
