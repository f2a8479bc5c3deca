"""Multi-task balancing and weight EMA on the learning benchmark, and their cost per training step.

    python -m benchmarks.balancing learn --iters 200 --seeds 0 1 2 --json benchmarks/results/balancing.json
    python -m benchmarks.balancing learn --iters 80 --opts crop_size=[64,64] --tag c64 ...   # shared 2-core CPU
    python -m benchmarks.balancing cost --steps 3 --json benchmarks/results/balancing_cost.json

learn: the tiny TaskDiffusion of configs/demo/synthetic_pascal.yml on the generated PASCAL-style set
(benchmarks/learning.py's data), one ordinary `main.py --run_mode train` per method and seed. The fixed
arm and the EMA arm come from the same runs (`ema.decay` set, `ema.evaluate: both`): EMA never changes
the raw weights' training, so those runs' raw metrics are exactly a fixed run's (the trainer's default
step is bit-identical, tests/engine/test_train_plugins.py) and their EMA metrics are the EMA arm.
Δm is against the fixed arm's mean over seeds, so fixed scatters around 0 and shows the seed spread.

cost: seconds per training step of each method relative to fixed, measured on the same process with
the variants interleaved step by step (fixed, m1, m2, ..., fixed, m1, ...; warm-up step dropped) for the
tiny demo model and for ViT-B at 256x256 (configs/pascal/vitB.yml, random init, trBatch 1).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import git_commit, machine_description  # noqa: E402
from benchmarks.learning import delta_m, ensure_data, headline  # noqa: E402
from data.tasks import TASK_ORDER, task_infos  # noqa: E402

CONFIG = "configs/demo/synthetic_pascal.yml"
DB = "PASCALContext"
EMA_DECAY = 0.99  # the tiny runs are a few hundred steps: 0.9999 would average over far more steps than exist
# arm name -> config overrides; fixed and ema are read from the 'fixed+ema' runs
METHODS = {
    "fixed+ema": [f"ema.decay={EMA_DECAY}", "ema.evaluate=both", "ema.select=raw"],
    "uncertainty": ["loss_balancing.name=uncertainty"],
    "dwa": ["loss_balancing.name=dwa", "loss_balancing.window=20"],
    "log": ["loss_balancing.name=log"],
    "rlw": ["loss_balancing.name=rlw"],
    "famo": ["loss_balancing.name=famo"],
    "upgrad": ["loss_balancing.name=upgrad"],
    "pcgrad": ["loss_balancing.name=pcgrad"],
}


def _version(name, seed, args) -> str:
    return f"bal_{name.replace('+', '_')}_s{seed}" + (f"_{args.tag}" if args.tag else "")


def _finished(run_dir: Path, iters: int) -> dict | None:
    files = sorted((run_dir / "metrics").glob("metrics_iter*.json")) if (run_dir / "metrics").exists() else []
    payload = json.loads(files[-1].read_text()) if files else None
    return payload if payload and payload.get("iteration") == iters else None


def run_seeds(name, seeds, args, data_root: Path, out_root: Path) -> list:
    """Train one method for every seed, the seeds side by side (one process each); finished runs are
    reused. Returns the final metrics JSON of each seed."""
    procs = []
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    for seed in seeds:
        version = _version(name, seed, args)
        if _finished(out_root / version, args.iters):
            continue
        opts = [f"seed={seed}", f"version_name={version}", f"out_dir={out_root}", f"max_iter={args.iters}",
                f"val_interval={args.iters}", f"ckpt_interval={args.iters}", *args.opts, *METHODS[name]]
        cmd = [sys.executable, "main.py", "--config_exp", CONFIG, "--data_root", str(data_root), "--run_mode",
               "train", "--opts", *opts]
        print("[balancing]", " ".join(cmd), flush=True)
        procs.append((version, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)))
    for version, proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"error: run {version} failed (exit {proc.returncode}); see {out_root / version}")
    if procs:
        print(f"[balancing] {name}: {time.perf_counter() - t0:.0f}s for {len(procs)} run(s)", flush=True)
    return [_finished(out_root / _version(name, seed, args), args.iters) for seed in seeds]


def learn(args) -> dict:
    data_root, out_root = Path(args.data_root), Path(args.out)
    ensure_data("pascal", data_root, 96, 24, args.image_size)
    results = {}  # arm -> [results per seed]
    for name in args.methods:
        if args.table_only:
            done = [_finished(out_root / _version(name, seed, args), args.iters) for seed in args.seeds]
            if not all(done):
                print(f"[balancing] {name}: not every seed finished; left out of the table")
                continue
        payloads = done if args.table_only else run_seeds(name, args.seeds, args, data_root, out_root)
        for payload in payloads:
            if name == "fixed+ema":
                results.setdefault("fixed", []).append(payload["by_weights"]["raw"]["results"])
                results.setdefault(f"ema {EMA_DECAY}", []).append(payload["by_weights"]["ema"]["results"])
            else:
                results.setdefault(name, []).append(payload["results"])
    if "fixed" not in results:
        print("[balancing] no table without fixed+ema among --methods (the reference); runs are done")
        return {"results": {}}
    tasks = [t for t in TASK_ORDER if t in results["fixed"][0]]
    heads = {m: [headline(r, DB, tasks) for r in rs] for m, rs in results.items()}
    ref = {t: statistics.mean(h[t] for h in heads["fixed"]) for t in tasks}
    infos = task_infos(DB, tasks)
    lines = [f"| method ({args.iters} it, seeds {' '.join(map(str, args.seeds))}) | "
             + " | ".join(f"{t} {infos[t].metric}" for t in tasks) + " | Δm vs fixed mean (%) | per seed |",
             "|---|" + "---|" * (len(tasks) + 2)]
    report = {}
    for m, hs in heads.items():
        dms = [delta_m(h, ref, DB) for h in hs]
        cells = []
        for t in tasks:
            vals = [h[t] for h in hs]
            sd = f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.mean(vals):.2f}{sd}")
        sd = f" ± {statistics.stdev(dms):.2f}" if len(dms) > 1 else ""
        lines.append(f"| {m} | " + " | ".join(cells) + f" | **{statistics.mean(dms):+.2f}**{sd} | "
                     + ", ".join(f"{d:+.2f}" for d in dms) + " |")
        report[m] = {"per_seed": hs, "delta_m": dms}
    print("\n".join(lines))
    return {"table": lines, "results": report}


# ---------------------------------------------------------------------------------------------- cost
COST_ARMS = {
    "fixed": [],
    "ema": ["ema.decay=0.9999"],
    "uncertainty": ["loss_balancing.name=uncertainty"],
    "dwa": ["loss_balancing.name=dwa"],
    "log": ["loss_balancing.name=log"],
    "rlw": ["loss_balancing.name=rlw"],
    "famo": ["loss_balancing.name=famo"],
    "upgrad": ["loss_balancing.name=upgrad"],
    "pcgrad": ["loss_balancing.name=pcgrad"],
}
MODELS = {
    "tiny (synthetic_pascal.yml, 128x128, trBatch 2)": (CONFIG, ["trBatch=2"]),
    "ViT-B 256x256 (pascal/vitB.yml, random init, trBatch 1)": (
        "configs/pascal/vitB.yml", ["crop_size=[256,256]", "trBatch=1", "backbone_weights=null"]),
}


def cost(args) -> dict:
    import tempfile

    import torch

    from data import build_dataset
    from engine.config import load_config
    from engine.trainer import Trainer
    from losses import build_criterion
    from models import build_model

    data_root = Path(args.data_root)
    ensure_data("pascal", data_root, 96, 24)
    torch.set_num_threads(args.threads)
    out = {}
    lines = ["| model | " + " | ".join(COST_ARMS) + " |", "|---|" + "---|" * len(COST_ARMS)]
    for label, (cfg_path, extra) in [(k, v) for k, v in MODELS.items()
                                     if ("tiny" if k.startswith("tiny") else "vitb") in args.models]:
        arms = {a: o for a, o in COST_ARMS.items() if a in args.arms}
        model = None
        trainers = {}
        for arm, opts in arms.items():  # one model shared by every arm (memory); each arm its own trainer
            cfg = load_config(cfg_path, opts=[*extra, "nworkers=0", "amp=false", "max_iter=1000", *opts],
                              data_root=str(data_root), output_dir=tempfile.mkdtemp(prefix="balcost_"))
            cfg.run_mode = "train"
            if model is None:
                torch.manual_seed(0)
                model = build_model(cfg)
                train_set = build_dataset(cfg, "train")
            trainers[arm] = Trainer(cfg, model, build_criterion(cfg), train_set, None, torch.device("cpu"),
                                    tensorboard=False, resume=False)
        from engine.train_data import TrainStream

        streams = {a: TrainStream(t.train_set, t.batch_size, 0, 0, 1, num_workers=0) for a, t in trainers.items()}
        times = {a: [] for a in trainers}
        for step in range(args.steps + 1):  # interleaved; step 0 is warm-up
            for arm, t in trainers.items():
                t0 = time.perf_counter()
                t.train_step(streams[arm])
                if step:
                    times[arm].append(time.perf_counter() - t0)
                t.optimizer.state.clear()  # Adam's moments re-created every step, alike for every arm (memory)
                for other in trainers.values():  # another arm's backbone hook may hold this step's graph
                    if hasattr(other.plugins.balancer, "_features"):
                        other.plugins.balancer._features = []
        for st in streams.values():
            st.close()
        med = {a: statistics.median(v) for a, v in times.items()}
        out[label] = {"seconds": times, "median_s": med, "relative": {a: med[a] / med["fixed"] for a in med}}
        lines.append(f"| {label} | " + " | ".join(f"{med[a]:.2f}s ({med[a] / med['fixed']:.2f}x)" if a in med else "-"
                                                 for a in COST_ARMS) + " |")
        print(lines[-1], flush=True)
        for t in trainers.values():
            t.close()
        del trainers, model
    print("\n".join(lines))
    return {"table": lines, "results": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("learn", help="Δm and headline metrics of every method over seeds")
    lp.add_argument("--iters", type=int, default=200)
    lp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    lp.add_argument("--tag", default="")
    lp.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every run")
    lp.add_argument("--image_size", nargs=2, type=int, default=None, metavar=("H", "W"),
                    help="generated image size (give it with its own --data_root; crops smaller than the "
                         "images fail evaluation, whose images are not cropped)")
    lp.add_argument("--table_only", action="store_true", help="launch nothing: the table of the finished runs")
    lp.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                    help="methods to run (two drivers with disjoint lists run side by side; the table is "
                         "built from finished runs by a call with all of them)")
    lp.add_argument("--out", default=str(ROOT / "runs" / "balancing"))
    cp = sub.add_parser("cost", help="seconds per training step relative to fixed")
    cp.add_argument("--steps", type=int, default=3)
    cp.add_argument("--threads", type=int, default=2)
    cp.add_argument("--arms", nargs="+", default=list(COST_ARMS), choices=list(COST_ARMS))
    cp.add_argument("--models", nargs="+", default=["tiny", "vitb"], choices=["tiny", "vitb"])
    for q in (lp, cp):
        q.add_argument("--data_root", default=str(ROOT / "data_root" / "learning"))
        q.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = learn(args) if args.what == "learn" else cost(args)
    if args.json:
        import torch

        meta = {"commit": git_commit(), "machine": machine_description(torch.device("cpu")), "args": vars(args)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**meta, **result}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
