"""utils/distributed.py: single-process no-ops, and a real 2-process gloo group (collectives + sharded
evaluation equal to the single-process evaluation); the environment helpers, one-line error reports,
and a gloo collective that times out instead of hanging when a rank never joins it."""
import io
import json
import os
import socket
import sys
import time

import pytest
import torch
import torch.multiprocessing as tmp_mp

import utils.distributed as D


def test_single_process_defaults(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert not D.is_dist_avail_and_initialized()  # importing created no group
    info = D.init_distributed(device="cpu")
    assert (info.rank, info.local_rank, info.world_size, info.is_distributed) == (0, 0, 1, False)
    assert info.device == torch.device("cpu")
    assert not D.is_dist_avail_and_initialized()
    assert D.get_rank() == 0 and D.get_world_size() == 1 and D.is_main_process()
    t = torch.tensor([1.5, 2.0], dtype=torch.float64)
    assert D.all_reduce_sum(t) is t and t.tolist() == [1.5, 2.0]
    assert D.all_gather_object({"a": 1}) == [{"a": 1}]
    assert D.broadcast_object("x") == "x"
    assert D.any_rank(True) is True and D.any_rank(False) is False
    D.barrier()
    D.cleanup_distributed()


def test_environment_helpers(monkeypatch):
    for var in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    assert (D.env_rank(), D.env_world_size(), D.is_main_process_env()) == (0, 1, True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (D.env_rank(), D.env_world_size(), D.is_main_process_env()) == (3, 4, False)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(RuntimeError, match="RANK='x'"):
        D.env_rank()


def test_errors_every_rank_hits_are_printed_once(monkeypatch):
    """A config error (all ranks alike) is printed by rank 0 only; a rank-local error (its data shard) by
    that rank, naming rank and host; always one line."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    buf = io.StringIO()
    assert D.report_error("bad key 'lr'\n  in config.yml", file=buf)
    assert buf.getvalue() == "error: bad key 'lr' | in config.yml\n"
    assert D.format_error("cannot read a.png", same_on_all_ranks=False) == \
        f"error: [rank 0 on {socket.gethostname()}] cannot read a.png"
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    buf = io.StringIO()
    assert not D.report_error("bad key 'lr'", file=buf) and buf.getvalue() == ""
    assert D.report_error("cannot read a.png", same_on_all_ranks=False, file=buf)
    assert buf.getvalue() == f"error: [rank 2 on {socket.gethostname()}] cannot read a.png\n"
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert D.format_error("cannot read a.png", same_on_all_ranks=False) == "error: cannot read a.png"
    # on several nodes the first process of each node reports a shared error (its files may differ)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert D.format_error("no dataset under /data") == "error: no dataset under /data"


def test_warning_for_restarts_with_the_shared_rendezvous_store(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")  # what torchrun exports by default
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in D.elastic_store_warning()
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")  # no restarts: nothing can go wrong
    assert D.elastic_store_warning() is None
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    assert D.elastic_store_warning() is None
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE")  # not under torchrun
    assert D.elastic_store_warning() is None


def test_timeout_is_checked_and_nccl_gets_async_error_handling(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    for bad in (0, -1, "soon"):
        with pytest.raises(RuntimeError, match="dist_timeout_minutes"):
            D.init_distributed(device="cpu", timeout_minutes=bad)
    assert D.DEFAULT_TIMEOUT_MINUTES == 30.0
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    D._prepare_backend_env("gloo")
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in os.environ
    D._prepare_backend_env("nccl")
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")  # the user's choice is kept
    D._prepare_backend_env("nccl")
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"


def test_bad_environment_is_explained(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(RuntimeError, match="WORLD_SIZE"):
        D.init_distributed(device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR|MASTER_PORT"):
        D.init_distributed(device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, repo: str) -> None:
    sys.path.insert(0, repo)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    import utils.distributed as dist_utils
    sys.path.insert(0, os.path.join(repo, "tests", "evaluation"))
    from test_multitask import PASCAL_TASKS, _evaluator, make_batch

    info = dist_utils.init_distributed(device="cpu")
    assert info.is_distributed and info.world_size == world and info.rank == rank
    t = torch.tensor([float(rank + 1), 10.0 * rank], dtype=torch.float64)
    dist_utils.all_reduce_sum(t)
    gathered = dist_utils.all_gather_object({"rank": rank})
    bcast = dist_utils.broadcast_object(f"from {rank}")
    anyr = [dist_utils.any_rank(rank == world - 1), dist_utils.any_rank(False)]
    # each rank evaluates its own shard (batches rank::world); the estimate subset must be picked globally
    full = _evaluator("PASCALContext", PASCAL_TASKS)
    est = _evaluator("PASCALContext", PASCAL_TASKS, max_images=3, estimate=True)
    for s in range(rank, 5, world):
        pred, batch = make_batch(s, PASCAL_TASKS)
        full.update(pred, batch)
        est.update(pred, batch)
    for ev in (full, est):
        ev.synchronize()
    res = {"sum": t.tolist(), "gathered": gathered, "bcast": bcast, "any": anyr, "full": full.compute(), "est": est.compute()}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist_utils.cleanup_distributed()


def test_two_process_gloo_group_and_sharded_evaluation(tmp_path, repo_root):
    sys.path.insert(0, str(repo_root / "tests" / "evaluation"))
    from test_multitask import PASCAL_TASKS, _evaluator, make_batch

    tmp_mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), str(repo_root)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["sum"] == r1["sum"] == [3.0, 10.0]
    assert r0["gathered"] == [{"rank": 0}, {"rank": 1}] and r1["bcast"] == "from 0"
    assert r0["any"] == r1["any"] == [True, False]  # rank 1's flag reaches rank 0
    assert r0["full"] == r1["full"] and r0["est"] == r1["est"]  # every rank gets the result
    full = _evaluator("PASCALContext", PASCAL_TASKS)
    est = _evaluator("PASCALContext", PASCAL_TASKS, max_images=3, estimate=True)
    for s in range(5):
        pred, batch = make_batch(s, PASCAL_TASKS)
        full.update(pred, batch)
        est.update(pred, batch)
    single = json.loads(json.dumps({"full": full.compute(), "est": est.compute()}))
    assert r0["est"]["edge"] == single["est"]["edge"]  # same 3-image subset and counts
    for t, metrics in single["full"].items():
        for k, v in metrics.items():
            if isinstance(v, dict) or k in ("mIoU", "maxF", "odsF", "oisF", "AP", "num_images", "pixel_acc"):
                assert r0["full"][t][k] == v, (t, k)
            else:
                assert r0["full"][t][k] == pytest.approx(v, rel=1e-12, abs=1e-12), (t, k)


TIMEOUT_MIN = 0.04  # 2.4 s


def _timeout_worker(rank: int, world: int, port: int, out_dir: str, repo: str) -> None:
    """Rank 0 enters an all-reduce that rank 1 never joins; rank 1 stays alive (no connection reset) until
    rank 0 has reported, so what ends rank 0's wait can only be the timeout."""
    sys.path.insert(0, repo)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    import torch.distributed as dist

    import utils.distributed as dist_utils

    dist_utils.init_distributed(device="cpu", timeout_minutes=TIMEOUT_MIN)
    report = os.path.join(out_dir, "rank0.json")
    if rank == 0:
        t0 = time.monotonic()
        try:
            dist_utils.all_reduce_sum(torch.ones(1))
            outcome = "returned"
        except RuntimeError as err:
            outcome = f"raised: {err}"
        with open(report + ".tmp", "w") as f:
            json.dump({"outcome": outcome, "seconds": time.monotonic() - t0}, f)
        os.replace(report + ".tmp", report)
    else:
        deadline = time.monotonic() + 120
        while not os.path.exists(report) and time.monotonic() < deadline:
            time.sleep(0.05)
    dist.destroy_process_group()


def test_gloo_collective_times_out_instead_of_hanging(tmp_path, repo_root):
    tmp_mp.spawn(_timeout_worker, args=(2, _free_port(), str(tmp_path), str(repo_root)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    assert r0["outcome"].startswith("raised"), r0
    assert TIMEOUT_MIN * 60 * 0.9 <= r0["seconds"] < 60, r0


def test_any_rank_uses_a_gloo_side_group_under_nccl(monkeypatch):
    """Under NCCL, host flags go over a gloo group (no GPU copy); when gloo cannot be set up, the default
    group is used."""
    import utils.distributed as ud

    calls = []
    monkeypatch.setattr(ud, "is_dist_avail_and_initialized", lambda: True)
    monkeypatch.setattr(ud, "get_world_size", lambda: 2)
    monkeypatch.setattr(ud.dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(ud.dist, "new_group", lambda backend=None: calls.append(("new_group", backend)) or "G")

    def fake_all_reduce(t, op=None, group=None):
        calls.append(("all_reduce", group))
        t.add_(1)  # the other rank's flag

    monkeypatch.setattr(ud.dist, "all_reduce", fake_all_reduce)
    ud._CPU_GROUP.clear()
    assert ud.any_rank(False) is True and ud.any_rank(False) is True
    assert calls == [("new_group", "gloo"), ("all_reduce", "G"), ("all_reduce", "G")]  # created once

    ud._CPU_GROUP.clear()
    calls.clear()

    def no_gloo(backend=None):
        raise RuntimeError("gloo unavailable")

    monkeypatch.setattr(ud.dist, "new_group", no_gloo)
    monkeypatch.setattr(ud, "all_reduce_sum", lambda t: calls.append(("default", None)) or t)
    assert ud.any_rank(True) is True and calls == [("default", None)]
    ud._CPU_GROUP.clear()
