"""Predict every task for images, a folder of images, or a dataset split, with a trained checkpoint.

    python infer.py --config_exp runs/demo_synthetic_pascal/config.yml \
        --trained_model runs/demo_synthetic_pascal/checkpoints/best.pth --input photos/ --output preds/

--input: an image file, a folder of images (any sizes; --recursive: its subfolders too, the outputs mirroring
the input tree), or `split:val` (the dataset's val split, with ground truth: the metrics JSON is written
too). Photos are turned upright by their EXIF orientation first, as every viewer shows them. --config_exp
may be left out: the config stored in the checkpoint is used (given, it wins; a checkpoint trained for
another experiment says in one line what it was trained for). Writes under --output:
    <task>/<name>.png         labels as indexed PNG with the VOC palette (pixel = class id); saliency and
                              edges as 8-bit grey; normals as RGB (n+1)/2; depth as 16-bit millimetres
    depth_color/<name>.png    depth colormap (depth tasks only)
    overview/<name>.png       input | (ground truth) | prediction per task, side by side; shrunk so that its
                              longer side is at most engine.pictures.OVERVIEW_MAX_SIDE (4096) pixels
    metrics.json              split inputs only: the full evaluation protocol (over the readable samples)
Runs on CUDA when available (else CPU; --device cpu, cuda, cuda:N or mps to choose), batched (--batch_size),
with a progress bar; --seed fixes the diffusion sampling noise (per image, so results do not depend on the
batch size). Predictions take the path evaluation takes (engine.predict.run_predictions), so the files
are those that metrics.json scores.

The arguments, the config, the device, the output folder, the inputs and the checkpoint are checked in that
order before any prediction, so a job that cannot finish fails in seconds. An unreadable input (a corrupt,
truncated or non-image file; a dataset sample whose files cannot be read) does not stop the job: every
readable one is written, and one summary line at the end names the others with the reason.

Exit status:
    0  every input predicted and written
    2  nothing predicted: a bad argument, config, checkpoint, --input, --output or --device; one line on
       stderr `error: <what> <which>: <reason>; <what to do>`
    3  some inputs unreadable: every readable input is written; one `error:` line on stderr lists the others
    75 the storage refused a write (full disk or quota, I/O error, read-only): `error: cannot write <file>:
       <reason>; ...`; no partial file is left, every file written before is complete
    1  an unexpected failure (a bug): Python's traceback
The last log line counts the inputs: predicted, unreadable, and files skipped as not images.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNREADABLE = 3
EXIT_STORAGE = 75  # the storage refused a write (as main.py)


def build_parser() -> argparse.ArgumentParser:
    from utils.cli import add_model_args

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="image file, folder of images, or split:val")
    p.add_argument("--output", default=None, help="output folder (default <output_dir>/inference)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--samples", type=int, default=None,
                   help="ensemble members N per image (default: the config's eval_samples, 1); N > 1 also "
                        "writes per-pixel uncertainty maps (docs/method.md#sample-ensembles)")
    p.add_argument("--recursive", action="store_true",
                   help="also predict the images in the subfolders of an --input folder; the output tree mirrors "
                        "the input tree (<task>/<subfolder>/<name>.png)")
    return add_model_args(p, config_required=False)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from data import DatasetError
    from engine.inference import InferenceError
    from utils.checkpoint import CheckpointError
    from engine.cli import load_cli_config
    from utils.cli import fail

    cfg = load_cli_config(args)
    if cfg is None:
        return EXIT_USAGE
    cfg.run_mode = "infer"
    try:
        return run(cfg, args)
    except (InferenceError, DatasetError, CheckpointError) as err:
        fail(err)
        return EXIT_USAGE
    except OSError as err:
        from utils.io import storage_error

        failed = storage_error(err, getattr(err, "filename", None) or (args.output or cfg.output_dir))
        if failed is None:
            raise
        return fail(f"{failed}; every file written before it is complete, the checkpoint is untouched; free space "
                    f"and run the same command again", EXIT_STORAGE)


def check_counts(args) -> None:
    """--workers and --batch_size as numbers the DataLoader accepts (else a late traceback)."""
    from engine.inference import InferenceError

    if args.workers < 0:
        raise InferenceError(f"argument --workers {args.workers}: must be 0 or more; pass --workers 0 to "
                             f"read images in the main process")
    if args.samples is not None and args.samples < 1:
        raise InferenceError(f"argument --samples {args.samples}: must be 1 or more; pass 1 for a single "
                             f"prediction or N > 1 for an ensemble with uncertainty maps")
    if args.batch_size is not None and args.batch_size < 1:
        raise InferenceError(f"argument --batch_size {args.batch_size}: must be 1 or more; pass a positive "
                             f"number or leave it out for the config's valBatch")


def build_inputs(cfg, args):
    """(dataset, collate, metrics sink or None, what one input is called); unreadable samples become markers."""
    from data.sample_errors import CatchSampleErrors, collate_catching
    from engine.inference import ImageFolder, collate_images, scan_inputs

    if not args.input.startswith("split:"):
        files, others = scan_inputs(args.input, recursive=bool(getattr(args, "recursive", False)))
        root = args.input if os.path.isdir(args.input) and getattr(args, "recursive", False) else None
        ds = ImageFolder(files, cfg, root=root)
        ds.not_images = [os.path.relpath(f, args.input) for f in others]
        return ds, collate_catching(collate_images), None, "images"
    from data import build_dataset, build_transforms, collate_fn
    from engine.sinks import MetricsSink
    from evaluation import build_evaluator
    from utils.logger import interactive

    split = args.input.split(":", 1)[1]
    ds = build_dataset(cfg, split, transform=build_transforms(cfg, "val"))
    metrics = MetricsSink(build_evaluator(cfg, full_edge=True, progress=interactive()))
    return CatchSampleErrors(ds), collate_catching(collate_fn), metrics, "samples"


def load_model(cfg, args, device):
    """The trained model (a checkpoint needing a full unpickle only with --trust_checkpoint)."""
    from engine.cli import load_trained_model

    return load_trained_model(cfg, args.trained_model, device, trusted=bool(args.trust_checkpoint),
                              raw=bool(getattr(args, "raw_weights", False)))


def run(cfg, args) -> int:
    """Check everything that can be checked, then predict batch by batch; returns the exit status."""
    from data.tasks import task_infos
    from engine.inference import input_label, output_subfolders, prepare_output_dir, resolve_device
    from engine.run_folder import describe_experiment
    from utils.logger import get_logger, setup_logger

    setup_logger(None)
    if not args.config_exp:
        get_logger().info(f"config: the one stored in {args.trained_model} ({describe_experiment(cfg)})")
    check_counts(args)
    device = resolve_device(args.device)
    infos = task_infos(cfg.db_name, cfg.TASKS.NAMES)
    out_dir = os.path.abspath(args.output or os.path.join(cfg.output_dir, "inference"))
    prepare_output_dir(out_dir, output_subfolders(infos))
    ds, collate, metrics, what = build_inputs(cfg, args)
    model = load_model(cfg, args, device)
    from engine.fast_inference import prepare_inference

    amp = prepare_inference(cfg, model, device)  # amp_cpu auto: the faster CPU precision; compile: true
    done = predict_all(cfg, args, model, device, ds, collate, metrics, infos, out_dir, amp)
    failed = [(input_label(ds, f.index), f.message) for f in done.failed]
    if metrics is not None:
        write_metrics(cfg, args, metrics, done.count, failed, out_dir)
    return report_failures(failed, done.count, len(ds), what, metrics is not None)


def predict_all(cfg, args, model, device, ds, collate, metrics, infos, out_dir, amp: bool = False):
    """Run every readable batch through the shared prediction path into the per-task PNGs, the overviews
    and (split inputs) the metrics; returns the engine.predict.PredictionRun."""
    from torch.utils.data import DataLoader

    from engine.inference import GuardWrites, input_label
    from engine.predict import run_predictions
    from engine.evaluator import ensemble_options
    from engine.sinks import PredictionPNGSink, VisualGridSink
    from utils.logger import Progress, get_logger

    log = get_logger()
    seed = int(cfg.seed if args.seed is None else args.seed)
    bs = int(args.batch_size or cfg.valBatch)
    loader = DataLoader(ds, batch_size=bs, shuffle=False, num_workers=args.workers, collate_fn=collate)
    options = ensemble_options(cfg, args.samples)
    if metrics is not None and options["samples"] > 1:  # split input: the uncertainty is scored too
        from engine.sinks import UncertaintySink

        metrics.uncertainty = UncertaintySink(infos)
    overview = os.path.join(out_dir, "overview")
    sinks = [GuardWrites([PredictionPNGSink(out_dir), VisualGridSink(folder=overview)], out_dir)]
    log.info(f"predicting {len(ds)} image(s) from {args.input} on {device} (batch {bs}, seed {seed}) -> {out_dir}")
    t0 = time.perf_counter()

    def log_unreadable(records):
        for f in records:
            log.warning(f"skipped {input_label(ds, f.index)}: cannot be read ({f.message})")

    run = run_predictions(model, loader, ([metrics] if metrics is not None else []) + sinks, tasks=infos,
                          device=device, seed=seed, amp=amp, data_errors="skip",
                          progress=Progress(len(ds), desc="infer", every=max(1, len(ds) // 10)),
                          on_unreadable=log_unreadable, **options)
    log.info(f"wrote predictions of {run.count} image(s) in {time.perf_counter() - t0:.1f}s: "
             f"{', '.join(os.path.join(out_dir, t) for t in infos)}, overviews in {overview}")
    log.info(input_summary(ds, run.count, len(run.failed)))
    return run


def input_summary(ds, predicted: int, unreadable: int) -> str:
    """'inputs: 12 predicted, 1 unreadable, 3 skipped as not images (notes.txt, a.csv, ...)'."""
    others = list(getattr(ds, "not_images", []) or [])
    text = f"inputs: {predicted} predicted, {unreadable} unreadable, {len(others)} skipped as not images"
    if others:
        text += " (" + ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "") + ")"
    return text


def write_metrics(cfg, args, metrics, count: int, failed: list, out_dir) -> None:
    """metrics.json over the `count` readable samples (the unreadable ones, (name, reason) pairs, are listed
    in it); none without any."""
    from engine.evaluator import compute_delta_m, metric_table, to_plain, write_json_atomic
    from utils.logger import get_logger

    log = get_logger()
    if count == 0:
        log.warning("no sample could be read: metrics.json is not written")
        return
    results = metrics.compute()
    curves = []
    if getattr(metrics, "uncertainty", None) is not None:  # ensembles: scores and curves of the uncertainty
        from engine.evaluator import add_uncertainty_results, write_curve_pictures

        curves = write_curve_pictures(add_uncertainty_results(results, metrics.uncertainty),
                                      os.path.join(out_dir, "uncertainty"))
    results = to_plain(results)
    dm = compute_delta_m(results, cfg.get("delta_m_reference"), cfg)
    seed = int(cfg.seed if args.seed is None else args.seed)
    payload = {"checkpoint": os.path.abspath(args.trained_model), "input": args.input, "seed": seed,
               "num_images": count, "protocol": "full", "results": results, "delta_m": dm}
    if curves:
        payload["uncertainty_curves"] = curves
    if failed:
        payload["unreadable"] = [{"name": n, "reason": r} for n, r in failed]
    path = write_json_atomic(os.path.join(out_dir, "metrics.json"), payload)
    log.info("\n" + metric_table(results, cfg, dm) + f"\nmetrics: {path}")


def report_failures(failed: list, count: int, total: int, what: str, split: bool) -> int:
    """The one summary line for unreadable inputs; EXIT_UNREADABLE if any, else EXIT_OK."""
    from engine.inference import failure_summary
    from utils.cli import fail

    if not failed:
        return EXIT_OK
    if split:
        advice = ("fix or regenerate those dataset files and run again; metrics.json covers the "
                  f"{count} readable sample(s) only")
    else:
        advice = f"the other {count} image(s) are written; fix or remove those files and run again for them"
    fail(failure_summary(failed, total, what, advice))
    return EXIT_UNREADABLE


if __name__ == "__main__":
    sys.exit(main())
