"""Graceful stop: a stop signal finishes the current step, saves last.pth at that iteration and raises
TrainingStopped; a signal during an evaluation aborts it (the state was saved before it) and the
evaluation runs on resume; the resumed run ends with the uninterrupted run's weights; a second Ctrl-C
exits at once; no DataLoader worker outlives the stop; train_log.jsonl holds each iteration once."""
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from engine.stop import StopSignals, TrainingStopped, exit_status_for
from engine.trainer import Trainer
from tests.engine.conftest import BASE_OPTS, CONFIG, ROOT, env_for_subprocess, tiny_cfg

N = 6
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")


class SignalAt(nn.Module):
    """The real criterion; sends `sig` to this process during the forward of one (1-based) iteration."""

    def __init__(self, criterion, trainer_ref, iteration, sig=signal.SIGTERM):
        super().__init__()
        self.criterion, self.ref, self.at, self.sig = criterion, trainer_ref, iteration, sig

    def forward(self, outputs, targets):
        if self.ref and self.ref[0].iteration + 1 == self.at:
            os.kill(os.getpid(), self.sig)
        return self.criterion(outputs, targets)


def _trainer(data, out, *opts, signal_at=None, sig=signal.SIGTERM, with_val=False):
    from data import build_dataset
    from losses import build_criterion
    from models import build_model

    cfg = tiny_cfg(data, out, f"max_iter={N}", "val_interval=1000", "drop_path_rate=0.1", *opts)
    torch.manual_seed(123)
    ref = []
    crit = build_criterion(cfg)
    if signal_at is not None:
        crit = SignalAt(crit, ref, signal_at, sig)
    t = Trainer(cfg, build_model(cfg), crit, build_dataset(cfg, "train"),
                build_dataset(cfg, "val") if with_val else None, torch.device("cpu"), tensorboard=False)
    ref.append(t)
    return t


def _model(path):
    return torch.load(path, weights_only=True)["model"]


def _same_weights(a, b):
    wa, wb = _model(a), _model(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_sigterm_finishes_the_step_saves_and_resumes_to_the_uninterrupted_result(tiny_data, tmp_path):
    full = _trainer(tiny_data, tmp_path / "full")
    full.train()
    full.close()

    t = _trainer(tiny_data, tmp_path / "stopped", "nworkers=2", signal_at=3)
    with pytest.raises(TrainingStopped) as e:
        t.train()
    t.close()
    assert e.value.iteration == 3 and e.value.status == 128 + signal.SIGTERM
    assert "run the same command to resume" in str(e.value)
    assert multiprocessing.active_children() == []  # the DataLoader workers were shut down
    last = tmp_path / "stopped" / "checkpoints" / "last.pth"
    assert torch.load(last, weights_only=True)["iteration"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after training

    again = _trainer(tiny_data, tmp_path / "stopped", "nworkers=2")
    assert again.iteration == 3
    again.train()
    again.close()
    _same_weights(tmp_path / "full" / "checkpoints" / "last.pth", last)
    lines = (tmp_path / "stopped" / "metrics" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == list(range(1, N + 1))


def test_signal_during_evaluation_aborts_it_and_it_runs_on_resume(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    t = _trainer(tiny_data, out, "val_interval=2", with_val=True)
    real = t.validate

    def interrupted(final=False):  # the signal arrives while the first evaluation is running
        os.kill(os.getpid(), signal.SIGUSR1)
        return real(final)

    monkeypatch.setattr(t, "validate", interrupted)
    with pytest.raises(TrainingStopped) as e:
        t.train()
    t.close()
    assert e.value.iteration == 2 and e.value.status == 128 + signal.SIGUSR1
    assert torch.load(out / "checkpoints" / "last.pth", weights_only=True)["iteration"] == 2  # saved first
    assert not (out / "metrics" / "metrics_iter000002.json").exists()

    again = _trainer(tiny_data, out, "val_interval=2", with_val=True)
    again.train(stop_at=3)
    again.close()
    assert (out / "metrics" / "metrics_iter000002.json").is_file()  # the pending evaluation ran first
    assert [k for k, _ in again.history] == [3]


def test_second_ctrl_c_exits_at_once():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == signal.SIGINT  # first: only a request
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs at the next bytecode boundary
    assert exit_status_for(signal.SIGINT) == 130


def _cmd(data, out, *opts):
    return [sys.executable, "main.py", "--config_exp", CONFIG, "--run_mode", "train", "--data_root", data,
            "--output_dir", str(out), "--opts", *BASE_OPTS, "max_iter=400", "val_interval=1000", *opts]


def test_sigusr1_to_a_real_process_saves_and_exits_with_the_documented_status(tiny_data, tmp_path):
    out = tmp_path / "run"
    log = out / "metrics" / "train_log.jsonl"
    proc = subprocess.Popen(_cmd(tiny_data, out, "nworkers=1"), cwd=ROOT, env=env_for_subprocess(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no training progress within 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR1, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    stopped = torch.load(out / "checkpoints" / "last.pth", weights_only=True)["iteration"]
    assert f"stopped at iteration {stopped} of 400 (SIGUSR1)" in stdout
    assert "run the same command to resume" in stdout
    assert "stopped at iteration" in (out / "log.txt").read_text()
    assert not any(n.startswith(".") for n in os.listdir(out / "checkpoints"))  # no temporary left
