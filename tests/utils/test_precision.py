"""utils/precision.py: when forwards run under bfloat16 autocast."""
import torch

from utils.precision import bf16_autocast


def test_bf16_autocast_reads_amp_and_amp_cpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU
    assert bf16_autocast({"amp": True}, gpu) and not bf16_autocast({"amp": False}, gpu)
    assert not bf16_autocast({"amp": True}, cpu)  # the default: fp32 on CPU
    assert bf16_autocast({"amp": True, "amp_cpu": True}, cpu) and bf16_autocast({"amp": True, "amp_cpu": True}, "cpu")
    assert not bf16_autocast({"amp": False, "amp_cpu": True}, cpu)  # amp off switches both off
    assert not bf16_autocast({"amp": True, "amp_cpu": True}, torch.device("meta"))
