"""Training and evaluation loops; nothing model-specific.

    engine.trainer.Trainer        iteration-based training: DDP, bf16 autocast, accumulation, clipping,
                                  exact resume, TensorBoard, periodic evaluation, last/best checkpoints
    engine.evaluator.evaluate     sharded evaluation with per-image sampling noise, metrics JSON, PNGs
    engine.train_data.TrainStream endless, resumable per-rank training batches
    engine.inference              predictions for arbitrary images (infer.py)
    engine.runner.run_experiment  what `main.py --run_mode train|infer` runs
    engine.config.load_config     the config with every package's cross-checks (all programs load through it)
    engine.cli                    the checked config and the trained model for infer.py and the tools
Submodules are imported on use, so `import engine` stays cheap.
"""
