"""Predict every task for images, a folder of images, or a dataset split, with a trained checkpoint.

    python infer.py --config_exp runs/demo_synthetic_pascal/config.yml \
        --trained_model runs/demo_synthetic_pascal/checkpoints/best.pth --input photos/ --output preds/

--input: an image file, a folder of images (any sizes), or `split:val` (the dataset's val split, with ground
truth: the metrics JSON is written too). Writes under --output:
    <task>/<name>.png         labels as indexed PNG with the VOC palette (pixel = class id); saliency and
                              edges as 8-bit grey; normals as RGB (n+1)/2; depth as 16-bit millimetres
    depth_color/<name>.png    depth colormap (depth tasks only)
    overview/<name>.png       input | (ground truth) | prediction per task, side by side
    metrics.json              split inputs only: the full evaluation protocol
Runs on CUDA when available (else CPU; --device to choose), batched (--batch_size), with a progress bar;
--seed fixes the diffusion sampling noise (per image, so results do not depend on the batch size).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    from utils.cli import add_model_args

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="image file, folder of images, or split:val")
    p.add_argument("--output", default=None, help="output folder (default <output_dir>/inference)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    return add_model_args(p)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from utils.cli import fail, load_cli_config

    cfg = load_cli_config(args)
    if cfg is None:
        return 2
    cfg.run_mode = "infer"
    try:
        return run(cfg, args)
    except (ValueError, FileNotFoundError) as err:
        return fail(err)


def run(cfg, args) -> int:
    from torch.utils.data import DataLoader

    from data.tasks import task_infos
    from engine.evaluator import compute_delta_m, metric_table, to_plain, write_json_atomic
    from engine.inference import ImageFolder, PredictionJob, collate_images, list_images, predict_batch
    from utils.checkpoint import CheckpointError
    from utils.cli import fail, load_trained_model, pick_device
    from utils.config import bf16_autocast
    from utils.logger import Progress, setup_logger

    out_dir = os.path.abspath(args.output or os.path.join(cfg.output_dir, "inference"))
    log = setup_logger(None)
    device = pick_device(args.device)
    seed = int(cfg.seed if args.seed is None else args.seed)
    bs = int(args.batch_size or cfg.valBatch)
    infos = task_infos(cfg.db_name, cfg.TASKS.NAMES)
    try:
        model = load_trained_model(cfg, args.trained_model, device)
    except CheckpointError as err:
        return fail(err)

    evaluator = None
    if args.input.startswith("split:"):
        from data import DatasetError, build_dataset, build_transforms, collate_fn

        split = args.input.split(":", 1)[1]
        try:
            ds = build_dataset(cfg, split, transform=build_transforms(cfg, "val"))
        except DatasetError as err:
            return fail(err)
        collate = collate_fn
        from evaluation import build_evaluator

        from utils.logger import interactive

        evaluator = build_evaluator(cfg, full_edge=True, progress=interactive())
        evaluator.reset()
    else:
        ds = ImageFolder(list_images(args.input), cfg)
        collate = collate_images
    loader = DataLoader(ds, batch_size=bs, shuffle=False, num_workers=args.workers, collate_fn=collate)
    job = PredictionJob(infos, out_dir, evaluator)
    log.info(f"predicting {len(ds)} image(s) from {args.input} on {device} (batch {bs}, seed {seed}) -> {out_dir}")
    t0 = time.perf_counter()
    progress = Progress(len(ds), desc="infer", every=max(1, len(ds) // 10))
    try:
        for batch in loader:
            images = batch["image"].to(device)
            pred = predict_batch(model, images, batch["meta"]["img_name"], seed, amp=bf16_autocast(cfg, device))
            job.process(batch, pred)
            progress.update(len(batch["meta"]["img_name"]))
    finally:
        progress.close()
    log.info(f"wrote predictions of {job.count} image(s) in {time.perf_counter() - t0:.1f}s: "
             f"{', '.join(os.path.join(out_dir, t) for t in infos)}, overviews in {os.path.join(out_dir, 'overview')}")
    if evaluator is not None:
        evaluator.synchronize()
        results = to_plain(evaluator.compute())
        dm = compute_delta_m(results, cfg.get("delta_m_reference"), cfg)
        path = write_json_atomic(os.path.join(out_dir, "metrics.json"),
                                 {"checkpoint": os.path.abspath(args.trained_model), "input": args.input,
                                  "seed": seed, "num_images": job.count, "protocol": "full",
                                  "results": results, "delta_m": dm})
        log.info("\n" + metric_table(results, cfg, dm) + f"\nmetrics: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
