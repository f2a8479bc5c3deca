"""Multi-node and elastic training through torchrun (CPU, gloo, the tiny demo config).

(a) Two torchrun agents joined by a c10d rendezvous on 127.0.0.1, each a "node" with one process, train
    exactly as one node with two processes: the same final weights and the same metrics JSON.
(b) With `--max-restarts 1`, a worker killed by SIGKILL after the first checkpoint makes torchrun restart
    the group; the new workers resume from last.pth and end with the weights of an uninterrupted run.
(c) scripts/slurm_train.sh under stand-in `srun`/`scancel`/`scontrol` commands: SIGUSR1 to the batch
    script (what `--signal=B:USR1@180` does before the time limit) stops training with last.pth saved
    and requeues the job; the requeued job (the same script again) resumes to the uninterrupted result.
(d) The same script on pre-emption (SIGTERM to every process of the job): the current iteration is saved.

Every run is a subprocess launched as users launch it (`python -m torch.distributed.run ... main.py`),
with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 as docs/cluster.md and the SLURM script set it: with this
PyTorch's default (one store shared by the agent and all restarts) the restarted workers of (b) read the
dead workers' addresses and fail with "Connection refused".
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import BASE_OPTS, CONFIG, ROOT, env_for_subprocess

N, EVERY = 10, 2  # iterations, checkpoint interval: long enough to kill a worker mid-run, short on 2 cores
TIMEOUT = 300

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc and SIGKILL")


def _free_port() -> int:
    """A TCP port nobody listens on now (bind to port 0, let the kernel choose)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_args(data: str, out: Path) -> list:
    """main.py's arguments after the config and mode, the same for every launch (comparable runs)."""
    return ["--data_root", data, "--output_dir", str(out), "--opts", *BASE_OPTS, f"max_iter={N}",
            "val_interval=1000", f"ckpt_interval={EVERY}"]


def _main_args(data: str, out: Path) -> list:
    """main.py and its arguments."""
    return ["main.py", "--config_exp", CONFIG, "--run_mode", "train", *_run_args(data, out)]


def _env(**extra) -> dict:
    """The engine tests' subprocess environment plus a fresh rendezvous store per torchrun restart."""
    env = env_for_subprocess()
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    env.update(extra)
    return env


def _torchrun(*launcher_args) -> list:
    """The torchrun command of this interpreter (no reliance on a `torchrun` script on PATH)."""
    return [sys.executable, "-m", "torch.distributed.run", *launcher_args]


def _start(cmd: list, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a launcher with stdout+stderr in a file (a pipe nobody reads could block it)."""
    f = open(log, "w")
    try:
        return subprocess.Popen(cmd, cwd=ROOT, env=env or _env(), stdout=f, stderr=subprocess.STDOUT)
    finally:
        f.close()


def _finish(procs: list, logs: list) -> None:
    """Wait for every launcher; on a timeout kill them all, so no stray agent outlives the test."""
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"{log}: exit {p.returncode}\n" + log.read_text()[-4000:]


def _wait_for_first_checkpoint(proc: subprocess.Popen, run: Path, log: Path) -> None:
    """Return once checkpoints/iter_<EVERY>.pth exists: the moment to interrupt a run mid-way."""
    first = run / "checkpoints" / f"iter_{EVERY:06d}.pth"
    deadline = time.monotonic() + TIMEOUT
    while not first.exists():
        assert proc.poll() is None, "the run ended before its first checkpoint:\n" + log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"no checkpoint within {TIMEOUT} s"
        time.sleep(0.02)


def _weights(run: Path) -> dict:
    """The model tensors of the run's final last.pth (which must be at iteration N)."""
    ck = torch.load(run / "checkpoints" / "last.pth", map_location="cpu", weights_only=False)
    assert ck["iteration"] == N, ck["iteration"]
    return ck["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    """Bit-identical final weights: the runs computed exactly the same training."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name, t in wa.items():
        assert torch.equal(t, wb[name]), name


def _metrics(run: Path) -> dict:
    """The final metrics JSON without its timing (the only field that may differ between equal runs)."""
    payload = json.loads((run / "metrics" / f"metrics_iter{N:06d}.json").read_text())
    payload.pop("eval_seconds", None)
    return payload


def _losses(run: Path) -> dict:
    """{iteration: logged losses}; a resumed run logs some iterations twice, the later entry counts."""
    out = {}
    for line in (run / "metrics" / "train_log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        out[entry.pop("iteration")] = entry
    return out


@pytest.fixture(scope="module")
def one_node(tiny_data, tmp_path_factory) -> Path:
    """The reference: one node, two processes, never interrupted."""
    out = tmp_path_factory.mktemp("one_node")
    log = out / "torchrun.log"
    cmd = _torchrun("--standalone", "--nproc_per_node=2") + _main_args(tiny_data, out / "run")
    _finish([_start(cmd, log)], [log])
    return out / "run"


def test_two_nodes_train_like_one_node_with_two_processes(tiny_data, one_node, tmp_path):
    out = tmp_path / "run"
    endpoint = f"127.0.0.1:{_free_port()}"
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    procs, logs = [], []
    for node in (0, 1):
        # On a real cluster only the node named in the endpoint matches its own address and hosts the
        # rendezvous store; here both nodes are 127.0.0.1, so say explicitly which one hosts it.
        cmd = _torchrun("--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}",
                        f"--rdzv_id={run_id}", f"--rdzv_conf=is_host={'true' if node == 0 else 'false'}",
                        *_main_args(tiny_data, out))
        logs.append(tmp_path / f"node{node}.log")
        procs.append(_start(cmd, logs[-1]))
    _finish(procs, logs)
    assert "2 process(es)" in "".join(log.read_text() for log in logs)
    _assert_same_weights(one_node, out)
    assert _metrics(out) == _metrics(one_node)
    assert _losses(out) == _losses(one_node)


def _children(pid: int) -> list:
    """Pids whose parent is `pid` (read from /proc/*/stat; the command field may contain spaces)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


def _worker_of_rank(agent_pid: int, rank: int) -> int:
    """The pid of torchrun's worker process with global rank `rank` (from its environment)."""
    for pid in _children(agent_pid):
        try:
            env = Path("/proc", str(pid), "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no worker with RANK={rank} among the children of torchrun ({agent_pid})")


def test_killed_worker_is_restarted_and_resumes_to_the_uninterrupted_result(tiny_data, one_node, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "elastic.log"
    cmd = _torchrun("--standalone", "--nproc_per_node=2", "--max-restarts=1") + _main_args(tiny_data, out)
    proc = _start(cmd, log)
    try:
        _wait_for_first_checkpoint(proc, out, log)
        os.kill(_worker_of_rank(proc.pid, 1), signal.SIGKILL)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    _finish([proc], [log])
    text = log.read_text()
    resumed = re.findall(re.escape(f"resumed from {out / 'checkpoints' / 'last.pth'}: ") + r"(\d+) of (\d+)", text)
    assert len(resumed) == 1, text[-4000:]  # exactly one restart, which resumed mid-run
    done, total = map(int, resumed[0])
    assert EVERY <= done < N == total, resumed
    _assert_same_weights(one_node, out)
    assert _metrics(out) == _metrics(one_node)
    assert _losses(out) == _losses(one_node)  # every iteration after the resume computed the same losses


# Stand-ins for the SLURM commands the batch script calls, on one node (this machine).
FAKE_SCONTROL = """#!/usr/bin/env bash
case "$1 ${2:-}" in
  "show hostnames") echo 127.0.0.1 ;;
  requeue*) echo "$2" >> "$FAKE_SLURM_DIR/requeued" ;;
  *) echo "fake scontrol: unsupported $*" >&2; exit 1 ;;
esac
"""
# srun: drop its own --options, remember the step's pid, become the step's command
FAKE_SRUN = """#!/usr/bin/env bash
while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do shift; done
echo $$ > "$FAKE_SLURM_DIR/step.pid"
exec "$@"
"""
# scancel --signal=SIG JOB: like SLURM, signal every process of the job step (torchrun and its workers)
FAKE_SCANCEL = """#!/usr/bin/env bash
sig=${1#--signal=}
tree() { echo "$1"; for c in $(pgrep -P "$1"); do tree "$c"; done; }
kill -s "$sig" $(tree "$(cat "$FAKE_SLURM_DIR/step.pid")") 2>/dev/null
exit 0
"""


def _fake_slurm(folder: Path) -> Path:
    """A folder with executable scontrol, srun and scancel stand-ins, to put first on PATH."""
    folder.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def _slurm_env(tmp_path: Path, job: str) -> dict:
    """The environment of a one-node, two-GPU SLURM job `job` whose scontrol/srun/scancel are stand-ins."""
    fake = _fake_slurm(tmp_path / "bin")
    return _env(PATH=f"{fake}{os.pathsep}{os.environ.get('PATH', '')}", FAKE_SLURM_DIR=str(tmp_path),
                SLURM_JOB_ID=job, SLURM_JOB_NODELIST="node01", SLURM_JOB_NUM_NODES="1", SLURM_SUBMIT_DIR=str(ROOT),
                GPUS_PER_NODE="2", MASTER_PORT=str(_free_port()), CONFIG=CONFIG, PYTHON=sys.executable,
                SHUTDOWN_TIMEOUT="120")


@pytest.mark.skipif(shutil.which("pgrep") is None or shutil.which("bash") is None, reason="needs bash and pgrep")
def test_slurm_script_stops_on_time_limit_signal_requeues_and_resumes(tiny_data, one_node, tmp_path):
    out = tmp_path / "run"
    job = "4242"
    env = _slurm_env(tmp_path, job)
    cmd = ["bash", str(ROOT / "scripts" / "slurm_train.sh"), *_run_args(tiny_data, out)]
    log = tmp_path / "job1.log"
    proc = _start(cmd, log, env)
    try:
        _wait_for_first_checkpoint(proc, out, log)
        os.kill(proc.pid, signal.SIGUSR1)  # --signal=B:USR1@180: to the batch script only
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.wait(timeout=TIMEOUT)
    text = log.read_text()
    assert proc.returncode != 0, text[-4000:]  # stopped early: not a success
    assert (tmp_path / "requeued").read_text().split() == [job], text[-4000:]
    stopped = re.findall(r"stopped at iteration (\d+) of (\d+)", text)
    assert len(stopped) == 1, text[-4000:]
    k = int(stopped[0][0])
    assert EVERY <= k < N == int(stopped[0][1]), stopped
    saved = torch.load(out / "checkpoints" / "last.pth", map_location="cpu", weights_only=False)
    assert saved["iteration"] == k  # the stop saved the iteration it finished, not only the periodic one

    log2 = tmp_path / "job2.log"  # the requeued job: the same script, same arguments
    _finish([_start(cmd, log2, dict(env, SLURM_RESTART_COUNT="1"))], [log2])
    text2 = log2.read_text()
    assert f"resumed from {out / 'checkpoints' / 'last.pth'}: {k} of {N}" in text2, text2[-4000:]
    assert (tmp_path / "requeued").read_text().split() == [job]  # finished: not requeued again
    _assert_same_weights(one_node, out)
    assert _metrics(out) == _metrics(one_node)
    assert _losses(out) == _losses(one_node)


@pytest.mark.skipif(shutil.which("pgrep") is None or shutil.which("bash") is None, reason="needs bash and pgrep")
def test_slurm_preemption_sigterm_saves_the_current_iteration(tiny_data, tmp_path):
    """Pre-emption (or scancel): SLURM sends SIGTERM to every process of the job, the batch script and
    each process of the step alike. Training stops after its current iteration with last.pth saved."""
    out = tmp_path / "run"
    env = _slurm_env(tmp_path, "4243")
    log = tmp_path / "job.log"
    proc = _start(["bash", str(ROOT / "scripts" / "slurm_train.sh"), *_run_args(tiny_data, out)], log, env)
    try:
        _wait_for_first_checkpoint(proc, out, log)
        agent = int((tmp_path / "step.pid").read_text())
        # SLURM's SIGTERM reaches each worker directly and, through torchrun's agent, a second time; a
        # short gap between them makes the worker see two signals (at the same instant they may merge)
        for pid in _children(agent):
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.1)
        os.kill(agent, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGTERM)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.wait(timeout=TIMEOUT)
    text = log.read_text()
    assert not (tmp_path / "requeued").exists()  # on pre-emption SLURM requeues the job itself
    stopped = re.findall(r"stopped at iteration (\d+) of (\d+)", text)
    assert len(stopped) == 1, text[-4000:]
    saved = torch.load(out / "checkpoints" / "last.pth", map_location="cpu", weights_only=False)
    assert saved["iteration"] == int(stopped[0][0]) < N
