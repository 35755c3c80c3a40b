"""The importance engine (pure Python: no Kafka)."""

import os

# One BLAS thread per process unless the environment says otherwise: the engine's matrix
# products are small (a batch of embeddings against a window of 1,000), and BLAS threads
# competing with the event loop for two cores made them about ten times slower here.
# Read by OpenBLAS when numpy loads, so set before the first import of numpy.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
