"""The one batcher (`store.batches`): equal-frame batches for encoding, kind-grouped
shuffled batches for training, loads trimmed to the batch's longest item."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastslow_cli.errors import FastslowError
from fastslow_cli.store.batches import Batcher


def _levels(frames: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    t = max(frames)
    mask = np.arange(t)[None, :] < np.array(frames)[:, None]
    fine = np.arange(len(frames) * t * 2 * 2 * 3, dtype=np.float16).reshape(len(frames), t, 2, 2, 3)
    coarse = np.ones((len(frames), t, 1, 1, 3), np.float16)
    return [fine, coarse], mask


def test_ordered_batches_hold_equal_frame_counts_and_cover_every_row(feature_table) -> None:
    batcher = Batcher(feature_table(*_levels([1, 3, 1, 2, 1, 3])))
    rows = np.array([5, 4, 3, 2, 1, 0])
    batches = batcher.ordered(rows, 2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    assert [batcher.frames[rows[b]].tolist() for b in batches] == [[1, 1], [1], [2], [3, 3]]


def test_shuffled_batches_keep_images_and_videos_apart_and_follow_the_seed(feature_table) -> None:
    batcher = Batcher(feature_table(*_levels([1, 3, 1, 2, 1, 3, 1, 2])))
    rows = np.arange(8)
    a = batcher.shuffled(rows, 3, np.random.default_rng(0))
    assert sorted(np.concatenate(a).tolist()) == list(range(8))
    for b in a:
        frames = batcher.frames[rows[b]]
        assert (frames == 1).all() or (frames > 1).all()
    b = batcher.shuffled(rows, 3, np.random.default_rng(0))
    assert [x.tolist() for x in a] == [x.tolist() for x in b]


def test_load_trims_to_the_longest_and_reads_only_the_named_levels(feature_table) -> None:
    levels, mask = _levels([1, 3, 1, 2])
    batcher = Batcher(feature_table(levels, mask), read=[0])
    got, frame_mask = batcher.load(np.array([0, 2]))
    assert got[0].shape == (2, 1, 2, 2, 3) and frame_mask.shape == (2, 1)
    assert got[0].dtype == torch.float32 and torch.equal(got[0], torch.from_numpy(levels[0][[0, 2], :1].astype(np.float32)))
    got, frame_mask = batcher.load(np.array([3, 1]))
    assert got[0].shape == (2, 3, 2, 2, 3) and frame_mask.sum(1).tolist() == [2, 3]
    assert got[1].shape == (2, 3, 1, 1, 3) and got[1].stride() == (0, 0, 0, 0, 0)  # unread: a zero-stride placeholder
    assert Batcher(feature_table(levels, mask)).load(np.array([1]))[0][1].sum() == 3 * 3  # read: the real values


def test_an_item_without_frames_is_refused(feature_table) -> None:
    levels, mask = _levels([1, 2])
    mask[1] = False
    with pytest.raises(FastslowError, match="no frames"):
        Batcher(feature_table(levels, mask))
