"""lookalike's service around the core: the command, the service's parts, the watcher."""
import os

# Set before NumPy loads OpenBLAS, which reads it once. OpenBLAS's threads otherwise
# spin for about 0.1 s after each matrix product, waiting for the next: between the
# service's many small products they would hold a core that decoding, encoding and
# Annoy want. With 4 they spin 2^4 cycles, then sleep.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# And one thread a product: the service's work is already shared out among its own
# threads (searching, judging, writing; decoding and encoding), each a core's worth.
# OpenBLAS's threads on top of them doubled the processor time of the judging's
# small products for no gain in time, and took the core the other threads had.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
