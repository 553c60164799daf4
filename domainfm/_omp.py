"""OpenMP threads that wait without spinning, set before torch loads.

Between parallel regions libgomp lets a waiting thread spin for a long time before it sleeps. On a CPU shared
with other work (a laptop, a notebook server, CI) the thread a region waits for is often off its core while its
partner spins, and each of the thousands of regions in a training step can cost a scheduler time slice: a 2D MAE
step ran 2 to 4.6x slower that way on 2 shared cores (``benchmarks/cpu_step_profile.py``, docs/performance.md).
``OMP_WAIT_POLICY=PASSIVE`` avoids it for about 12% on an idle, dedicated CPU. It is set only when neither
``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT`` is set and torch is not loaded yet (libgomp reads it once); set
``OMP_WAIT_POLICY=ACTIVE`` to keep libgomp's default.
"""

import os
import sys

if "torch" not in sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
