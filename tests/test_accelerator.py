"""The accelerator settings: what each run sets, that the defaults leave a CPU run alone, DDP's options."""

import socket

import pytest
import torch

from xecmae.configload import validate
from xecmae.train.accelerator import accelerator_settings, distributed_model

CUDA = torch.device("cuda", 0)  # the flags are plain process settings: no GPU is needed to set them
CPU = torch.device("cpu")


def snapshot():
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic, torch.get_float32_matmul_precision())


def test_defaults_leave_a_cpu_run_as_it_was():
    t = validate({}).training
    assert t.deterministic is False and t.cpu_amp is False
    before = snapshot()
    with accelerator_settings(CPU, amp=t.amp, deterministic=t.deterministic) as applied:
        assert applied == {} and snapshot() == before


def test_a_gpu_run_autotunes_and_uses_tf32_for_fp32_only():
    before = snapshot()
    with accelerator_settings(CUDA, amp=False) as applied:
        assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "high"
        assert applied == {"cudnn_benchmark": True, "float32_matmul_precision": "high"}
    assert snapshot() == before  # restored
    with accelerator_settings(CUDA, amp=True):
        assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == before[3]


@pytest.mark.parametrize("device", [CPU, CUDA])
def test_deterministic_mode_chooses_deterministic_kernels(device):
    before = snapshot()
    with accelerator_settings(device, amp=True, deterministic=True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # CUDA's atomics warn, they do not stop a run
        if device.type == "cuda":
            assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert snapshot() == before


def test_ddp_options(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = torch.nn.Linear(3, 2)
        model.register_buffer("constant", torch.ones(2))
        ddp = distributed_model(model, CPU)
        assert ddp.gradient_as_bucket_view and not ddp.broadcast_buffers
        assert not ddp.static_graph  # it would skip the first all-reduce of the MAE's dataclass output
        ddp(torch.randn(4, 3)).sum().backward()
        assert model.weight.grad is not None
    finally:
        torch.distributed.destroy_process_group()
