"""utils/distributed.py: single-process no-ops, and a real 2-process gloo group (collectives + sharded
evaluation equal to the single-process evaluation)."""
import json
import os
import socket
import sys

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
    D.barrier()
    D.cleanup_distributed()


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
    # each rank evaluates its own shard (batches rank::world); the estimate subset must be picked globally
    full = _evaluator("PASCALContext", PASCAL_TASKS)
    est = _evaluator("PASCALContext", PASCAL_TASKS, max_images=3, estimate=True)
    for s in range(rank, 5, world):
        pred, batch = make_batch(s, PASCAL_TASKS)
        full.update(pred, batch)
        est.update(pred, batch)
    for ev in (full, est):
        ev.synchronize()
    res = {"sum": t.tolist(), "gathered": gathered, "bcast": bcast, "full": full.compute(), "est": est.compute()}
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
