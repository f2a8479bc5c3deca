"""Learning quality: TaskDiffusion against the non-diffusion baseline on the synthetic datasets.

Both models share the backbone, budget, recipe and data (fixed generated sets, fixed seeds); only
`model:` differs. Each run is an ordinary `main.py --run_mode train` process, so this measures exactly
what users get. The table reports every task's headline metric and Delta_m (relative to the
baseline's mean over seeds, so the baseline's Delta_m is ~0 by construction and TaskDiffusion's is
the gain) for each seed and the mean.

    python -m benchmarks.learning                      # CPU-sized: minutes
    python -m benchmarks.learning --long --device cuda # longer GPU run
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.tasks import TASK_ORDER, task_infos  # noqa: E402

DATASETS = {
    "pascal": ("configs/demo/synthetic_pascal.yml", "PASCALContext"),
    "nyud": ("configs/demo/synthetic_nyud.yml", "NYUD"),
}


def ensure_data(dataset: str, root: Path, n_train: int, n_val: int, size=None) -> None:
    """Generate the fixed synthetic set once (seed 0); an existing one under `root` is reused as is."""
    folder = root / ("PASCALContext" if dataset == "pascal" else "NYUDv2")
    if folder.exists():
        return
    cmd = [sys.executable, "-m", "data.synthetic", "--dataset", dataset, "--out", str(root),
           "--train", str(n_train), "--val", str(n_val), "--seed", "0"]
    if size:
        cmd += ["--size", str(size[0]), str(size[1])]
    subprocess.run(cmd, check=True, cwd=ROOT)


def final_metrics(run_dir: Path) -> dict:
    files = sorted((run_dir / "metrics").glob("metrics_iter*.json"))
    if not files:
        raise FileNotFoundError(f"no metrics JSON under {run_dir / 'metrics'}: did the run finish?")
    data = json.loads(files[-1].read_text())
    if "results" not in data:
        raise KeyError(f"{files[-1]} has no 'results' (keys: {sorted(data)}): not a metrics file of main.py")
    return data["results"]


def run_one(dataset, model, seed, args, data_root: Path, out_root: Path) -> dict:
    cfg_path, _ = DATASETS[dataset]
    version = f"learn_{dataset}_{model}_s{seed}" + (f"_{args.tag}" if args.tag else "")
    run_dir = out_root / version
    opts = [f"model={model}", f"seed={seed}", f"version_name={version}", f"out_dir={out_root}",
            f"max_iter={args.iters}", f"val_interval={args.iters}", f"ckpt_interval={args.iters}", *args.opts]
    if args.device == "cpu":
        opts.append("amp=false")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if not (run_dir / "metrics").exists() or not list((run_dir / "metrics").glob("*.json")):
        cmd = [sys.executable, "main.py", "--config_exp", cfg_path, "--run_mode", "train",
               "--data_root", str(data_root), "--opts", *opts]
        print("[learning]", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return final_metrics(run_dir)


def headline(metrics: dict, db_name: str, tasks) -> dict:
    out = {}
    for task, info in task_infos(db_name, tasks).items():
        m = metrics.get(task, {})
        out[task] = m.get(info.metric, m.get(info.metric + "_est"))
    return out


def delta_m(values: dict, reference: dict, db_name: str) -> float:
    terms = []
    for task, info in task_infos(db_name, list(values)).items():
        v, r = values[task], reference[task]
        if v is None or r in (None, 0):
            continue
        sign = 1.0 if info.higher_is_better else -1.0
        terms.append(sign * (v - r) / r * 100.0)
    return sum(terms) / max(len(terms), 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["pascal", "nyud"], choices=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--long", action="store_true", help="GPU-sized run: 3000 iterations, larger data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data_root", default=str(ROOT / "data_root" / "learning"))
    p.add_argument("--out", default=str(ROOT / "runs" / "learning"))
    p.add_argument("--n_train", type=int, default=None, help="generated train images (default 96, --long 400)")
    p.add_argument("--n_val", type=int, default=None, help="generated val images (default 24, --long 48)")
    p.add_argument("--image_size", nargs=2, type=int, default=None, metavar=("H", "W"),
                   help="generated image size (default: data.synthetic's)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run (both models), e.g. bit_scales.all=0.1 timesteps=5")
    p.add_argument("--tag", default="", help="suffix of the run folders (finished runs are reused by name: "
                                                "give runs with other --opts/--iters their own tag)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.long:
        args.iters = max(args.iters, 3000)
    n_train = args.n_train or (400 if args.long else 96)
    n_val = args.n_val or (48 if args.long else 24)
    data_root, out_root = Path(args.data_root), Path(args.out)
    report = {}
    lines = []
    for dataset in args.datasets:
        cfg_path, db_name = DATASETS[dataset]
        ensure_data(dataset, data_root, n_train, n_val, args.image_size)
        results = {m: [run_one(dataset, m, s, args, data_root, out_root) for s in args.seeds]
                   for m in ("baseline", "TaskDiffusion")}
        tasks = [t for t in TASK_ORDER if t in results["baseline"][0]]
        heads = {m: [headline(r, db_name, tasks) for r in rs] for m, rs in results.items()}
        ref = {t: statistics.mean(h[t] for h in heads["baseline"] if h[t] is not None) for t in tasks}
        lines.append(f"\n### {dataset} ({args.iters} iterations, seeds {args.seeds})\n")
        lines.append("| model | seed | " + " | ".join(f"{t} {task_infos(db_name, [t])[t].metric}" for t in tasks)
                     + " | Delta_m vs baseline mean (%) |")
        lines.append("|---|---|" + "---|" * (len(tasks) + 1))
        report[dataset] = {}
        for m in ("baseline", "TaskDiffusion"):
            dms = []
            for seed, h in zip(args.seeds, heads[m]):
                dm = delta_m(h, ref, db_name)
                dms.append(dm)
                lines.append(f"| {m} | {seed} | " + " | ".join(f"{h[t]:.3f}" if h[t] is not None else "-"
                                                              for t in tasks) + f" | {dm:+.2f} |")
            means = {t: statistics.mean(h[t] for h in heads[m] if h[t] is not None) for t in tasks}
            lines.append(f"| {m} | mean | " + " | ".join(f"{means[t]:.3f}" for t in tasks)
                         + f" | {statistics.mean(dms):+.2f} |")
            report[dataset][m] = {"per_seed": heads[m], "delta_m": dms}
    text = "\n".join(lines)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
