"""Learning quality: TaskDiffusion against the non-diffusion baseline on the synthetic datasets.

Both models share the backbone, budget, recipe and data (fixed generated sets, fixed seeds); only
`model:` differs. Each run is an ordinary `main.py --run_mode train` process, so this measures exactly
what users get. The table reports every task's headline metric and Delta_m (relative to the
baseline's mean over seeds, so the baseline's Delta_m is ~0 by construction and TaskDiffusion's is
the gain) for each seed and the mean.

    python -m benchmarks.learning                      # CPU-sized: minutes
    python -m benchmarks.learning --long --device cuda # longer GPU run
    python -m benchmarks.learning --variant 'bit0.1:bit_scales.all=0.1' --variant 'steps1:timesteps=1'
    python -m benchmarks.learning --variant 'bf16:amp_cpu=true'   # bf16 inference of the fp32-trained models
    python -m benchmarks.learning --datasets cityscapes --iters 150 --n_train 48 --n_val 16 --image_size 96 192 \
        --opts input_size=[64,128] crop_size=[64,128]               # synthetic Cityscapes, scored at 96x192

--variant adds TaskDiffusion arms with config overrides to the same table (the knobs to look at when the
decoder does not help: bit_scale, number of DDIM steps, schedule); a variant that only changes inference
re-evaluates the default TaskDiffusion checkpoint (also `amp_cpu=true`: bf16 inference on the CPU).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import git_commit, machine_description  # noqa: E402
from data.datasets import dataset_spec  # noqa: E402
from data.tasks import TASK_ORDER, task_infos  # noqa: E402
from evaluation.delta import delta_m as evaluation_delta_m  # noqa: E402

DATASETS = {
    "pascal": ("configs/demo/synthetic_pascal.yml", "PASCALContext"),
    "nyud": ("configs/demo/synthetic_nyud.yml", "NYUD"),
    "cityscapes": ("configs/demo/synthetic_cityscapes.yml", "Cityscapes"),
}
# --backbones: the tiny CPU config of each backbone family (random-init timm architectures, README Backbones);
# "vit" is the dataset's config above, the others exist for the PASCAL-style set
FAMILY_CONFIGS = {
    "pascal": {"swin": "configs/demo/synthetic_pascal_swin.yml", "convnext": "configs/demo/synthetic_pascal_convnext.yml",
               "dinov2": "configs/demo/synthetic_pascal_dinov2.yml"},
    "nyud": {},
    "cityscapes": {},
}


def config_of(dataset: str, backbone: str) -> str:
    """The demo config of a dataset and backbone family; one-line error for a pair without one."""
    if backbone == "vit":
        return DATASETS[dataset][0]
    try:
        return FAMILY_CONFIGS[dataset][backbone]
    except KeyError:
        have = ", ".join(["vit", *FAMILY_CONFIGS[dataset]])
        raise SystemExit(f"error: --backbones {backbone}: no tiny {dataset} config for it; choose from {have}") from None


def ensure_data(dataset: str, root: Path, n_train: int, n_val: int, size=None) -> None:
    """Generate the fixed synthetic set once (seed 0); an existing one under `root` is reused as is."""
    folder = root / dataset_spec(DATASETS[dataset][1]).folder
    if folder.exists():
        return
    cmd = [sys.executable, "-m", "data.synthetic", "--dataset", dataset, "--out", str(root),
           "--train", str(n_train), "--val", str(n_val), "--seed", "0"]
    if size:
        cmd += ["--size", str(size[0]), str(size[1])]
    subprocess.run(cmd, check=True, cwd=ROOT)


# config keys measured at inference: a variant that sets nothing else re-evaluates the default
# TaskDiffusion checkpoint instead of training again (DDIM steps, parallel samples, bf16 on CPU)
INFERENCE_KEYS = {"timesteps", "randsteps", "amp_cpu", "eval_samples", "samples_chunk", "eval_aggregation"}


@dataclass(frozen=True)
class Arm:
    """One column of the comparison: a model plus config overrides (a TaskDiffusion variant)."""

    name: str
    model: str
    opts: tuple = ()

    @property
    def inference_only(self) -> bool:
        return bool(self.opts) and all(o.split("=", 1)[0].split(".")[0] in INFERENCE_KEYS for o in self.opts)


def parse_variant(text: str) -> Arm:
    """'NAME:KEY=VALUE [KEY=VALUE ...]' -> a TaskDiffusion arm, e.g. 'bit0.1:bit_scales.all=0.1'."""
    name, sep, rest = text.partition(":")
    opts = tuple(rest.split())
    if not sep or not name.strip() or not opts or any("=" not in o for o in opts):
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME:KEY=VALUE [KEY=VALUE ...], "
                                         f"e.g. 'bit0.1:bit_scales.all=0.1' or 'steps5:timesteps=5'")
    return Arm(f"TaskDiffusion[{name.strip()}]", "TaskDiffusion", opts)


def final_metrics(run_dir: Path) -> dict:
    """'results' of the run's last metrics file (training's final evaluation, or an infer run's)."""
    folder = run_dir / "metrics"  # an infer run (main.py --run_mode infer) writes into <run>/infer_<checkpoint>/
    files = sorted(folder.glob("metrics_iter*.json")) or sorted(run_dir.glob("infer_*/metrics/metrics_infer_iter*.json"),
                                                               key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no metrics JSON under {folder}: did the run finish?")
    data = json.loads(files[-1].read_text())
    if "results" not in data:
        raise KeyError(f"{files[-1]} has no 'results' (keys: {sorted(data)}): not a metrics file of main.py")
    return data["results"]


def run_folder(dataset: str, arm: Arm, seed: int, tag: str, backbone: str = "vit") -> str:
    slug = arm.name.replace("TaskDiffusion[", "TaskDiffusion_").rstrip("]")
    where = dataset if backbone == "vit" else f"{dataset}_{backbone}"
    return f"learn_{where}_{slug}_s{seed}" + (f"_{tag}" if tag else "")


def run_one(dataset, arm: Arm, seed, args, data_root: Path, out_root: Path, backbone: str = "vit") -> dict:
    """Train (or, for an inference-only variant, re-evaluate) one arm; finished runs are reused by name.

    On CPU the runs are fp32 (amp has no effect there unless amp_cpu=true)."""
    cfg_path = config_of(dataset, backbone)
    version = run_folder(dataset, arm, seed, args.tag, backbone)
    run_dir = out_root / version
    opts = [f"model={arm.model}", f"seed={seed}", f"version_name={version}", f"out_dir={out_root}",
            f"max_iter={args.iters}", f"val_interval={args.iters}", f"ckpt_interval={args.iters}", *args.opts,
            *arm.opts]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if not (run_dir / "metrics").exists() or not list((run_dir / "metrics").glob("*.json")):
        cmd = [sys.executable, "main.py", "--config_exp", cfg_path, "--data_root", str(data_root)]
        if arm.inference_only:
            default = Arm("TaskDiffusion", "TaskDiffusion")
            run_one(dataset, default, seed, args, data_root, out_root, backbone)  # trains it unless already done
            ckpt = out_root / run_folder(dataset, default, seed, args.tag, backbone) / "checkpoints" / "last.pth"
            cmd += ["--run_mode", "infer", "--trained_model", str(ckpt)]
        else:
            cmd += ["--run_mode", "train"]
        cmd += ["--opts", *opts]
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
    """Delta_m (evaluation/delta.py) of headline values {task: value} against {task: value}, over the tasks
    that have a value and a usable (non-zero, finite) reference; 0.0 when none has."""
    infos = task_infos(db_name, list(values))
    tasks = [t for t in infos if values[t] is not None and reference[t] is not None
             and reference[t] != 0 and math.isfinite(reference[t])]
    if not tasks:
        return 0.0
    as_results = {t: {infos[t].metric: values[t]} for t in tasks}
    as_reference = {t: {infos[t].metric: reference[t]} for t in tasks}
    return evaluation_delta_m(as_results, as_reference, db_name, tasks)


def compare_arms(dataset, db_name, backbone, section, args, data_root, out_root, lines) -> dict:
    """Train every arm of one dataset and backbone family, append its table to `lines`, return its report."""
    arms = ([] if args.no_baseline else [Arm("baseline", "baseline")]) + [Arm("TaskDiffusion", "TaskDiffusion"),
                                                                           *args.variant]
    results = {arm.name: [run_one(dataset, arm, s, args, data_root, out_root, backbone) for s in args.seeds]
               for arm in arms}
    ref_arm = arms[0].name  # Delta_m against the baseline's mean (--no_baseline: TaskDiffusion's)
    tasks = [t for t in TASK_ORDER if t in results[ref_arm][0]]
    heads = {m: [headline(r, db_name, tasks) for r in rs] for m, rs in results.items()}
    ref = {t: statistics.mean(h[t] for h in heads[ref_arm] if h[t] is not None) for t in tasks}
    lines.append(f"\n### {section} ({args.iters} iterations, seeds {args.seeds})\n")
    lines.append("| model | seed | " + " | ".join(f"{t} {task_infos(db_name, [t])[t].metric}" for t in tasks)
                 + f" | Delta_m vs {ref_arm} mean (%) |")
    lines.append("|---|---|" + "---|" * (len(tasks) + 1))
    report = {}
    for arm in arms:
        m = arm.name
        dms = []
        for seed, h in zip(args.seeds, heads[m]):
            dm = delta_m(h, ref, db_name)
            dms.append(dm)
            lines.append(f"| {m} | {seed} | " + " | ".join(f"{h[t]:.3f}" if h[t] is not None else "-"
                                                          for t in tasks) + f" | {dm:+.2f} |")
        means = {t: statistics.mean(h[t] for h in heads[m] if h[t] is not None) for t in tasks}
        spread = f" ± {statistics.stdev(dms):.2f}" if len(dms) > 1 else ""
        lines.append(f"| **{m}** | mean | " + " | ".join(f"{means[t]:.3f}" for t in tasks)
                     + f" | **{statistics.mean(dms):+.2f}**{spread} |")
        report[m] = {"opts": list(arm.opts), "per_seed": heads[m], "delta_m": dms}
    uncertainty_table(arms, results, tasks, lines, report)
    return report


def uncertainty_table(arms, results, tasks, lines, report) -> None:
    """For the ensemble arms (eval_samples > 1): each task's AUSE against its random-order value and
    Spearman's ρ between uncertainty and error (evaluation/uncertainty.py), mean ± stdev over seeds."""
    rows = []
    for arm in arms:
        per_seed = results[arm.name]
        if not any("unc_ause" in r.get(t, {}) for r in per_seed for t in tasks):
            continue
        cells = []
        for t in tasks:
            vals = {k: [r[t][k] for r in per_seed if k in r.get(t, {}) and r[t][k] == r[t][k]]
                    for k in ("unc_ause", "unc_ause_random", "unc_spearman")}
            if not vals["unc_ause"]:
                cells.append("-")
                continue
            f = lambda v: f"{statistics.mean(v):.4g}" + (f"±{statistics.stdev(v):.2g}" if len(v) > 1 else "")  # noqa: E731
            rho = f(vals["unc_spearman"]) if vals["unc_spearman"] else "nan"
            cells.append(f"{f(vals['unc_ause'])} / {f(vals['unc_ause_random'])} / ρ {rho}")
            report[arm.name].setdefault("uncertainty", {})[t] = vals
        rows.append(f"| {arm.name} | " + " | ".join(cells) + " |")
    if rows:
        lines.append("\nUncertainty (AUSE / AUSE of a random order / Spearman ρ(uncertainty, error); lower AUSE "
                     "is better, AUSE ≥ random means the spread ranks errors no better than chance):\n")
        lines.append("| model | " + " | ".join(tasks) + " |")
        lines.append("|---|" + "---|" * len(tasks))
        lines.extend(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["pascal", "nyud"], choices=list(DATASETS))
    p.add_argument("--backbones", nargs="+", default=["vit"], choices=["vit", "swin", "convnext", "dinov2"],
                   help="backbone families, each with its tiny demo config (vit: the tiny ViT; the timm families "
                        "exist for pascal); every family gets its own TaskDiffusion-vs-baseline table")
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
    p.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="NAME:KEY=VALUE ...",
                   help="an extra TaskDiffusion arm with config overrides, e.g. 'bit0.1:bit_scales.all=0.1'; "
                        "repeatable. Sampling-only overrides (timesteps, randsteps) re-evaluate the default "
                        "TaskDiffusion checkpoint instead of training again")
    p.add_argument("--tag", default="", help="suffix of the run folders (finished runs are reused by name: "
                                                "give runs with other --opts/--iters their own tag)")
    p.add_argument("--no_baseline", action="store_true",
                   help="skip the baseline arm: TaskDiffusion variants only, Delta_m against TaskDiffusion's mean "
                        "(e.g. inference-only ensemble arms)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.long:
        args.iters = max(args.iters, 3000)
    n_train = args.n_train or (400 if args.long else 96)
    n_val = args.n_val or (48 if args.long else 24)
    data_root, out_root = Path(args.data_root), Path(args.out)
    for dataset in args.datasets:  # every requested pair has a config, before anything runs
        for backbone in args.backbones:
            config_of(dataset, backbone)
    report = {}
    lines = []
    for dataset in args.datasets:
        db_name = DATASETS[dataset][1]
        ensure_data(dataset, data_root, n_train, n_val, args.image_size)
        for backbone in args.backbones:
            section = dataset if backbone == "vit" else f"{dataset}_{backbone}"
            report[section] = compare_arms(dataset, db_name, backbone, section, args, data_root, out_root, lines)
    text = "\n".join(lines)
    print(text)
    if args.json:
        import torch

        meta = {"commit": git_commit(), "machine": machine_description(torch.device(args.device)),
                "args": {k: (v if k != "variant" else [f"{a.name}:{' '.join(a.opts)}" for a in v])
                         for k, v in vars(args).items()}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**meta, "results": report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
