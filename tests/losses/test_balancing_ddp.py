"""A 2-process gloo run of the trainer's balancing calls equals a 1-process run on the same global batch:
DDP's gradient average for the loss-scaling methods (their own parameters averaged by the balancer), and
for the gradient methods the balancer's own average of the backbone Jacobians before aggregating."""
import os
import tempfile
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.losses.test_balancing import TASKS, _make

X = torch.tensor([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0], [-1.0, 1.5]])


class MeanToy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Linear(2, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = (self.head(torch.tanh(self.backbone(x))) ** 2).mean(0) + 0.1  # per-task batch means > 0
        return {"pred": {t: y[i] for i, t in enumerate(TASKS)}}


def train(name: str, x_of_step, distributed: bool) -> dict:
    model = MeanToy()
    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    bal = _make(name, window=1) if name == "dwa" else _make(name)
    bal.attach(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bal.add_to_optimizer(opt)
    for k in range(3):
        opt.zero_grad(set_to_none=True)
        bal.begin_step(k)
        ctx = net.no_sync() if distributed and bal.owns_reduction else nullcontext()
        with ctx:
            total, _ = bal(net(x_of_step(k)), {})
            bal.backward(total, 1)
        bal.finish(model)
        opt.step()
        bal.end_step(k + 1)
    return {k: v.detach().clone() for k, v in list(model.state_dict().items()) + list(bal.state_dict().items())
            if torch.is_tensor(v)}


METHODS = ["fixed", "uncertainty", "dwa", "rlw", "upgrad", "mgda"]


def _worker(rank, init, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        states = {n: train(n, lambda k: X.roll(k, 0)[rank * 2:(rank + 1) * 2], distributed=True)
                  for n in METHODS + ["log"]}
        if rank == 0:
            torch.save(states, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_on_the_global_batch(tmp_path):
    fd, init = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    os.unlink(init)
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(f"file://{init}", out), nprocs=2, join=True)  # one process group for all methods
    ddp = torch.load(out, weights_only=True)
    for name in METHODS:
        single = train(name, lambda k: X.roll(k, 0), distributed=False)
        assert ddp[name].keys() == single.keys()
        for k in single:
            a, b = ddp[name][k].double(), single[k].double()
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (name, k, a, b)
    # the comparison can fail: log balancing weights each rank's gradient by its own 1/loss (docs say why)
    single = train("log", lambda k: X.roll(k, 0), distributed=False)
    assert any(not torch.allclose(ddp["log"][k].double(), single[k].double(), rtol=1e-5, atol=1e-6) for k in single)
