"""``local.device`` resolution, bf16 autocast on CUDA only, and moving batches; all of it without a GPU."""

import pytest
import torch

from fedelta.common.devices import autocast_for, resolve_device, to_device


@pytest.mark.parametrize(("setting", "cuda", "expected"),
                         [("auto", False, "cpu"), ("auto", True, "cuda"), ("cpu", True, "cpu"), ("cuda", True, "cuda")])
def test_the_setting_resolves_to_a_device(monkeypatch, setting, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device(setting) == torch.device(expected)


def test_auto_is_the_cpu_on_this_machine():
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_without_a_gpu_is_an_error_naming_the_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'local.device': is 'cuda' but this process sees no CUDA device"):
        resolve_device("cuda")


def test_an_unknown_device_is_refused():
    with pytest.raises(ValueError, match="local.device"):
        resolve_device("tpu")


def test_autocast_changes_nothing_on_the_cpu():
    layer = torch.nn.Linear(4, 2)
    with autocast_for(torch.device("cpu")):
        out = layer(torch.ones(3, 4))
        assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")
    assert out.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_on_cuda_is_bf16():
    context = autocast_for(torch.device("cuda"))
    assert isinstance(context, torch.autocast)
    assert (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)


def test_every_tensor_of_a_batch_moves():
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    moved = to_device(batch, torch.device("meta"))
    assert set(moved) == set(batch)
    assert all(t.device.type == "meta" and t.shape == batch[k].shape for k, t in moved.items())
