"""fastslow: text-to-visual search that is both fast (dual encoder + HNSW) and accurate
(cross-attention re-ranking), after Miech et al., "Thinking Fast and Slow", CVPR 2021."""

__version__ = "0.1.0"
