"""fastslow: text-to-visual search that is both fast (dual encoder + HNSW) and accurate
(cross-attention re-ranking), after Miech et al., "Thinking Fast and Slow", CVPR 2021.

The public API (see the README, "Use from Python"):

```python
import fastslow_cli as fs
ws = fs.Workspace("~/.fastslow")
hits = ws.searcher().search("a dog catching a frisbee", k=10, rerank=20)
```

Names are imported on first use, so `import fastslow_cli` stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Workspace": "fastslow_cli.workspace",
    "TrainSummary": "fastslow_cli.workspace",
    "IndexSummary": "fastslow_cli.workspace",
    "ExtractSummary": "fastslow_cli.features.extract",
    "Searcher": "fastslow_cli.search.searcher",
    "Result": "fastslow_cli.search.searcher",
    "FastslowError": "fastslow_cli.errors",
    "UsageError": "fastslow_cli.errors",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from fastslow_cli.errors import FastslowError, UsageError
    from fastslow_cli.features.extract import ExtractSummary
    from fastslow_cli.search.searcher import Result, Searcher
    from fastslow_cli.workspace import IndexSummary, TrainSummary, Workspace


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastslow_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
