"""Suite-wide settings.

Tiny models on a loaded 2-core machine run many times slower with two intra-op threads than with
one, so torch (imported later by the tests that need it, and by their subprocesses) gets one thread.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
