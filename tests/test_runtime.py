"""runtime.py: thread count and device choice, with one-line errors for devices this machine lacks."""

from __future__ import annotations

import pytest
import torch

from fastslow_cli.errors import UsageError
from fastslow_cli.runtime import cpu_count, setup_torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest: restores the thread count after


def test_cpu_uses_every_core() -> None:
    assert setup_torch("cpu") == torch.device("cpu")
    assert torch.get_num_threads() == cpu_count()


def test_auto_takes_cuda_only_when_present() -> None:
    assert setup_torch("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert setup_torch(None) == setup_torch("AUTO")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no CUDA GPU is visible: use --device cpu"):
        setup_torch("cuda:0")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an Apple GPU")
def test_mps_without_an_apple_gpu_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no Apple GPU"):
        setup_torch("mps")


@pytest.mark.parametrize("name", ["gpu0", "meta", "cuda:x"])
def test_unknown_or_unsupported_devices_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="--device"):
        setup_torch(name)
