"""The Kafka side of importance-stream: config, worker, CLI, benchmarks."""

import models  # noqa: F401  (its BLAS thread settings come before numpy is loaded)
