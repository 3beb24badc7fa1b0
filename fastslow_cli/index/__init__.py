"""The search index: HNSW over Fast vectors, and the index folder.

The HNSW defaults live here, with no imports, so the CLI can show them in `--help`
without loading hnswlib or numpy; build, search, eval, the demo and the benchmarks all
use these same values.
"""

DEFAULT_M = 32
DEFAULT_EF_CONSTRUCTION = 200
# Text queries sit outside the item clusters: at ef 64 recall@10 fell to 0.86 at 10k
# items in the search benchmark; 256 keeps it >= 0.98 for well under a millisecond.
DEFAULT_EF = 256
