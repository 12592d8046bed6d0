"""lookalike's service around the core: the command, the worker, the watcher."""
import os

# Set before NumPy loads OpenBLAS, which reads it once. OpenBLAS's threads spin for
# about 0.1 s after each matrix product, waiting for the next: between the service's
# many small products they held a core that decoding, encoding and Annoy wanted (a
# burst at 10^5 images: 360 images/s, 410-435 with this). 2^4 cycles, then they sleep.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
