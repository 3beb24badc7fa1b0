"""Golden scores: tiny seeded Fast and Slow models on fixed inputs give the scores written
here, so a silent change to a model (layers, masking, pooling, init, scoring) shows up."""

from __future__ import annotations

import pytest
import torch

from fastslow_cli.models.fast import FastConfig, FastModel
from fastslow_cli.models.slow import SlowConfig, SlowModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

SHAPES = [[4, 4, 6], [2, 2, 12]]


def _inputs() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three items (an image, a 2-frame clip, an image) and two texts of fixed token ids (0 = padding)."""
    levels = [torch.sin(torch.arange(3 * 2 * h * w * c, dtype=torch.float32).reshape(3, 2, h, w, c) * 0.37)
              for h, w, c in SHAPES]
    frame_mask = torch.tensor([[True, False], [True, True], [True, False]])
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])
    return levels, frame_mask, ids, ids != 0


def test_fast_scores_of_a_seeded_model() -> None:
    torch.manual_seed(0)
    model = FastModel(FastConfig(level_shapes=SHAPES, vocab_size=12, max_len=8, max_frames=2, dim=8, width=16, heads=2,
                                 visual_layers=1, text_layers=1)).eval()
    levels, frame_mask, ids, mask = _inputs()
    with torch.inference_mode():
        scores = model.encode_text(ids, mask) @ model.encode_visual(levels, frame_mask).T
    expected = torch.tensor([[-0.40221146, -0.36513120, -0.40058321], [-0.34264785, -0.29473162, -0.33195346]])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_slow_scores_of_a_seeded_model() -> None:
    torch.manual_seed(0)
    model = SlowModel(SlowConfig(level_shapes=SHAPES, vocab_size=12, max_len=8, max_frames=2, width=16, heads=2,
                                 coarse_layers=1, refine_layers=1, decoder_layers=1, finest_level=0)).eval()
    levels, frame_mask, ids, mask = _inputs()
    with torch.inference_mode():
        scores = model.score_matrix(ids, mask, *model.encode_visual(levels, frame_mask))
    expected = torch.tensor([[-2.48125315, -2.48045111, -2.47929239], [-2.46272945, -2.46220875, -2.46191621]])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
