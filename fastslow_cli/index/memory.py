"""How an index stores the cached Slow memory: float16, or int8 with one scale per token.

The memory is the largest part of an index (a native image is 32 tokens x 256, a video
8 times that, BLIP 577 x 768 per frame). int8 halves it: each memory row (one token) is
stored as round(x / s) with s = max|x| / 127 of that row, and read back as q * s, so the
error of any value is at most s / 2 = max|row| / 254. The scale is kept as float32 (4
bytes per row), so a 256-wide row costs 260 bytes instead of 512.

```
slow_memory.f16        float16 rows                         (memory dtype "f16")
slow_memory.i8         int8 rows                            (memory dtype "int8")
slow_memory.scale.npy  float32 scale of every int8 row
```

An index from before the choice existed records no dtype and is float16.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fastslow_cli.errors import FastslowError

DTYPES = ("f16", "int8")
DEFAULT_DTYPE = "int8"  # chosen by measurement: README, "Compact Slow memory"
FILES = {"f16": "slow_memory.f16", "int8": "slow_memory.i8"}
SCALES = "slow_memory.scale.npy"
_STORED = {"f16": np.float16, "int8": np.int8}


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise FastslowError(f"memory dtype {dtype!r} is unknown: use one of {', '.join(DTYPES)} (--memory)")
    return dtype


def bytes_per_row(dtype: str, width: int) -> int:
    """Disk bytes of one memory token (row) in `dtype`."""
    return 2 * width if check_dtype(dtype) == "f16" else width + 4


def quantize_int8(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L, width) float rows -> (int8 rows, float32 scale per row); an all-zero row gets scale 0."""
    x = np.asarray(rows, dtype=np.float32)
    scale = np.abs(x).max(axis=1) / 127.0 if x.size else np.zeros(x.shape[0], np.float32)
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    q = np.clip(np.rint(x / safe), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 rows and their scales back to float32 (within scale / 2 of the original)."""
    return np.asarray(q, dtype=np.float32) * np.asarray(scale, dtype=np.float32)[:, None]


def as_stored(rows: np.ndarray, dtype: str) -> np.ndarray:
    """What the index would read back for `rows` stored as `dtype` (for eval and benchmarks)."""
    if check_dtype(dtype) == "f16":
        return np.asarray(rows, dtype=np.float16)
    return dequantize_int8(*quantize_int8(rows))


class MemoryWriter:
    """Appends item memories to an open file; `close` writes the scales (int8) and syncs."""

    def __init__(self, fh: BinaryIO, directory: Path, dtype: str) -> None:
        self.fh, self.directory, self.dtype = fh, directory, check_dtype(dtype)
        self.scales: list[np.ndarray] = []

    def write(self, rows: np.ndarray) -> None:
        if self.dtype == "f16":
            self.fh.write(np.ascontiguousarray(rows, dtype=np.float16).tobytes())
            return
        q, scale = quantize_int8(rows)
        self.fh.write(q.tobytes())
        self.scales.append(scale)

    def finish(self) -> None:
        if self.dtype == "int8":
            scales = np.concatenate(self.scales) if self.scales else np.zeros(0, np.float32)
            with open(self.directory / SCALES, "wb") as out:
                np.save(out, scales)
                out.flush()
                os.fsync(out.fileno())
        self.fh.flush()
        os.fsync(self.fh.fileno())


class StoredMemory:
    """An index's memory file opened by mmap; `rows(a, b)` reads rows a:b (float16 as stored,
    int8 dequantised to float32)."""

    def __init__(self, directory: Path, dtype: str, rows: int, width: int) -> None:
        self.dtype = check_dtype(dtype)
        self.data = np.memmap(directory / FILES[self.dtype], dtype=_STORED[self.dtype], mode="r", shape=(rows, width))
        self.scale = np.load(directory / SCALES, mmap_mode="r") if self.dtype == "int8" else None
        if self.scale is not None and len(self.scale) != rows:
            raise ValueError(f"{SCALES} has {len(self.scale)} scales for {rows} memory rows")

    def __len__(self) -> int:
        return len(self.data)

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.scale is None:
            return np.asarray(self.data[start:stop])
        return dequantize_int8(self.data[start:stop], self.scale[start:stop])
