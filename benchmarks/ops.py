"""How many operators a forward dispatches: the launch-bound half of speed, counted on the CPU.

On a GPU at the paper's batch of 2 the decoder is launch-bound: its cost is the number of kernels it
launches, not their FLOPs. That number does not need a GPU to be measured: every ATen operator the
model calls passes the dispatcher, and a `TorchDispatchMode` sees each call below autograd, i.e. the
ops a CUDA run would launch (forward and backward). Two counts are reported:

* **aten**: every dispatched ATen op;
* **kernels**: the ops that launch a kernel, i.e. without those that only make a view or read metadata
  (view, slice, permute, unsqueeze, t, expand, split, chunk, as_strided, detach, _unsafe_view, alias) and
  without allocation-only ops (empty, empty_like, empty_strided). Host syncs (`.item()`: the
  `_local_scalar_dense` op) are counted separately: a DDIM step should have none (CUDA graphs).

Per config (PASCAL / NYUD paper configs, random weights) and path (fast: the default per-task fast path;
grouped: the fast path with `grouped_ops: true`; ref: the reference formulation):

* **infer**: one inference call (backbone + the configured DDIM steps), batch `--batch`;
* **backbone**: the backbone alone; **per DDIM step** = (infer − backbone) / steps (the once-per-call
  clean task features spread over the steps, as the issue counted);
* **train**: one training step's forward + criterion + backward (no optimizer step: its count depends on
  the optimizer implementation, foreach or per-parameter, not on the model; reported separately as
  **optimizer** for Adam with foreach, the CUDA default).

Counts depend on the input size only through the number of ops (not at all, for these models), so
they are counted at a small size (64×64 by default). Deterministic: no timing is involved.

    python -m benchmarks.ops                        # every paper config, both paths, Markdown table
    python -m benchmarks.ops --configs pascal_vitB --paths fast --top 20 --json ops.json
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import git_commit, random_targets  # noqa: E402

# the paper configs (configs/pascal, configs/nyud): name -> file
PAPER_CONFIGS = {
    "pascal_vitB": "configs/pascal/vitB.yml",
    "pascal_vitL": "configs/pascal/vitL.yml",
    "pascal_vitL_mlore": "configs/pascal/vitL_mlore.yml",
    "pascal_swinL": "configs/pascal/swinL.yml",
    "pascal_dinov2L": "configs/pascal/dinov2L.yml",
    "pascal_convnextL": "configs/pascal/convnextL.yml",
    "nyud_vitL": "configs/nyud/vitL.yml",
    "nyud_vitL_mlore": "configs/nyud/vitL_mlore.yml",
    "nyud_swinL": "configs/nyud/swinL.yml",
    "nyud_dinov2L": "configs/nyud/dinov2L.yml",
    "demo_pascal": "configs/demo/synthetic_pascal.yml",
}
DEFAULT_CONFIGS = [k for k in PAPER_CONFIGS if not k.startswith("demo")]

# ops that launch no kernel: views / metadata, and allocation without initialisation
NO_KERNEL = {"view", "_unsafe_view", "slice", "select", "permute", "unsqueeze", "squeeze", "t", "transpose",
             "expand", "split", "split_with_sizes", "chunk", "unbind", "as_strided", "detach", "alias", "narrow",
             "unfold", "diagonal", "view_as_real", "view_as_complex", "lift_fresh", "empty", "empty_like",
             "empty_strided", "new_empty", "new_empty_strided", "_reshape_alias", "unsafe_split",
             "unsafe_split_with_sizes", "_local_scalar_dense", "resize_", "set_", "is_same_size", "sym_size",
             "sym_stride", "sym_numel", "sym_storage_offset", "_has_compatible_shallow_copy_type", "promote_types",
             "result_type"}
HOST_SYNC = {"_local_scalar_dense", "nonzero", "_assert_async", "is_nonzero"}


def op_name(func) -> str:
    """aten.convolution.default -> 'convolution' (the packet name, overload dropped)."""
    return func.overloadpacket.__name__


def launches_kernel(func) -> bool:
    name = op_name(func)
    if name in NO_KERNEL:
        return False
    return not getattr(func, "is_view", False)


class OpCounter(TorchDispatchMode):
    """Counts every ATen op dispatched while active: `aten`, `kernels` (views/allocations excluded),
    `syncs` (host synchronisations) and a per-op-name histogram of the kernel-launching ones."""

    def __init__(self):
        super().__init__()
        self.aten = 0
        self.kernels = 0
        self.syncs = 0
        self.by_op: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.aten += 1
        name = op_name(func)
        if name in HOST_SYNC:
            self.syncs += 1
        if launches_kernel(func):
            self.kernels += 1
            self.by_op[name] += 1
        return func(*args, **(kwargs or {}))

    def result(self) -> dict:
        return {"aten": self.aten, "kernels": self.kernels, "syncs": self.syncs}


def count(fn) -> OpCounter:
    counter = OpCounter()
    with counter:
        fn()
    return counter


def build(config: str, size, batch: int, model_kind: str | None = None):
    """(cfg, model, criterion, images, targets, noise) on the CPU with random weights."""
    from engine.config import load_config
    from losses import build_criterion
    from models import build_model

    import re

    from utils.config import ConfigError

    path = str(ROOT / PAPER_CONFIGS.get(config, config))
    base = ["backbone_weights=null", "drop_path_rate=0.0"] + ([f"model={model_kind}"] if model_kind else [])
    if "mlore" in Path(path).name:
        base.append("spatial_size=null")  # MLoRE's router size follows the token grid (derived at load)
    try:
        cfg = load_config(path, opts=base + [f"crop_size=[{int(size[0])},{int(size[1])}]"])
    except ConfigError as err:  # e.g. DINOv2's patch 14: the next multiple of what the backbone needs
        m = re.search(r"multiple of (\d+)", str(err))
        if not m:
            raise
        k = int(m.group(1))
        size = tuple(-(-int(v) // k) * k for v in size)
        cfg = load_config(path, opts=base + [f"crop_size=[{size[0]},{size[1]}]"])
    torch.manual_seed(0)
    model = build_model(cfg)
    criterion = build_criterion(cfg)
    h, w = cfg.TRAIN.SCALE
    g = torch.Generator().manual_seed(0)
    images = torch.randn((batch, 3, h, w), generator=g)
    targets = random_targets(cfg, batch, (h, w), "cpu", g)
    noise = model.initial_noise(images, [f"ops{i}" for i in range(batch)], seed=0)
    return cfg, model, criterion, images, targets, noise


def set_path(model, path: str) -> None:
    """fast: the per-task fast path (default config); grouped: the fast path with `grouped_ops: true`;
    ref: the reference formulation."""
    if hasattr(model.heads, "set_fast_path"):
        model.heads.set_fast_path(path in ("fast", "grouped"))
        model.heads.grouped_ops = path == "grouped"


def count_config(config: str, paths, size=(64, 64), batch: int = 2, precision: str = "fp32", top: int = 0,
                 train: bool = True) -> list[dict]:
    """One row per path: op counts of inference, backbone, DDIM step, training step, optimizer step."""
    cfg, model, criterion, images, targets, noise = build(config, size, batch)
    steps = int(cfg.timesteps)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    rows = []
    for path in paths:
        set_path(model, path)
        model.eval()
        with torch.no_grad(), amp:
            model(images, noise=noise)  # warm: lazy initialisations do not count
            inf = count(lambda: model(images, noise=noise))
            bb = count(lambda: model.backbone(images))
        row = {"config": config, "path": path, "precision": precision, "batch": batch, "size": list(cfg.TRAIN.SCALE),
               "steps": steps, "infer": inf.result(), "backbone": bb.result(),
               "step": {k: (inf.result()[k] - bb.result()[k]) / steps for k in ("aten", "kernels", "syncs")}}
        if top:
            row["infer_top_ops"] = dict((inf.by_op - bb.by_op).most_common(top))
        if train:
            model.train()

            def train_step():
                with amp:
                    out = model(images, targets)
                total, _ = criterion(out, targets)
                total.backward()

            train_step()  # warm
            model.zero_grad(set_to_none=True)
            tr = count(train_step)
            row["train"] = tr.result()
            if top:
                row["train_top_ops"] = dict(tr.by_op.most_common(top))
            opt = torch.optim.Adam(model.parameters(), lr=1e-9, foreach=True)
            opt.step()  # state initialised outside the count
            row["optimizer"] = count(opt.step).result()
            model.zero_grad(set_to_none=True)
        rows.append(row)
    return rows


def markdown(rows) -> str:
    lines = ["| config | path | infer aten / kernels | backbone kernels | **kernels per DDIM step** | "
             "train fwd+bwd aten / kernels | Adam step kernels (foreach) | host syncs (infer) |",
             "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['path']} | error: {r['error'][:120]} |" + " |" * 5)
            continue
        tr = r.get("train", {})
        lines.append(f"| {r['config']} | {r['path']} | {r['infer']['aten']} / {r['infer']['kernels']} | "
                     f"{r['backbone']['kernels']} | **{r['step']['kernels']:.0f}** | "
                     f"{tr.get('aten', '-')} / {tr.get('kernels', '-')} | "
                     f"{r.get('optimizer', {}).get('kernels', '-')} | {r['infer']['syncs']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                   help=f"config names ({', '.join(PAPER_CONFIGS)}) or YAML paths; default: every paper config")
    p.add_argument("--paths", default="fast,grouped,ref", help="comma list of fast, grouped, ref")
    p.add_argument("--size", nargs=2, type=int, default=[64, 64], help="input size H W (counts barely depend on it)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: under CPU autocast (adds the casts a bf16 GPU run launches)")
    p.add_argument("--skip_train", action="store_true")
    p.add_argument("--top", type=int, default=0, help="also list the N most frequent kernel-launching ops")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    if any(s not in ("fast", "grouped", "ref") for s in paths):
        p.error(f"--paths: fast, grouped and/or ref, got {args.paths!r}")
    torch.set_grad_enabled(True)
    rows = []
    for config in args.configs:
        print(f"[ops] {config} ({', '.join(paths)})", flush=True)
        start = len(rows)
        try:
            rows.extend(count_config(config, paths, tuple(args.size), args.batch, args.precision, args.top,
                                     train=not args.skip_train))
        except Exception as exc:  # one config failing must not lose the others
            rows.append({"config": config, "path": ",".join(paths), "error": f"{type(exc).__name__}: {exc}"})
        print(markdown(rows[start:]), flush=True)
        if args.top and "error" not in rows[-1]:
            for r in rows[start:]:
                print(f"  {r['path']} infer−backbone top ops: {r.get('infer_top_ops')}")
                if "train_top_ops" in r:
                    print(f"  {r['path']} train top ops: {r['train_top_ops']}")
    print()
    print(markdown(rows))
    if args.json:
        out = {"commit": git_commit(), "torch": torch.__version__, "args": vars(args), "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"[ops] wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
