"""runtime.py: device choice and the CLI's thread count and device choice, with one-line errors for devices this machine lacks."""

from __future__ import annotations

import pytest
import torch

from fastslow_cli.errors import UsageError
from fastslow_cli.runtime import cpu_count, resolve_device, use_all_cores

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest: restores the thread count after


def test_resolving_a_device_leaves_the_thread_count_alone() -> None:
    """The core never sets global torch state; only the CLI asks for every core."""
    assert resolve_device("cpu") == torch.device("cpu")
    assert torch.get_num_threads() == 1  # as the one_torch_thread fixture set it


def test_use_all_cores() -> None:
    use_all_cores()
    assert torch.get_num_threads() == cpu_count()


def test_auto_takes_cuda_only_when_present() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("AUTO")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no CUDA GPU is visible: use --device cpu"):
        resolve_device("cuda:0")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an Apple GPU")
def test_mps_without_an_apple_gpu_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no Apple GPU"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["gpu0", "meta", "cuda:x"])
def test_unknown_or_unsupported_devices_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="--device"):
        resolve_device(name)
