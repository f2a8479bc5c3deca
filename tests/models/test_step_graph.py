"""One DDIM step is ready for CUDA graphs: one graph without breaks, no host synchronisation.

A CUDA graph replays a fixed sequence of kernels, so a capturable step must not read a tensor's value on
the host (`.item()`, `.cpu()`, `bool(tensor)`, `nonzero`) nor branch in Python on data. TorchDynamo with
fullgraph=True raises on exactly those (a graph break), and the dispatch counter of benchmarks/ops.py
counts host syncs; both run on the CPU. The eager backend traces without generating code (seconds).
"""
import pytest
import torch
from easydict import EasyDict

from benchmarks.ops import count
from models import build_model
from models.diffusion import ddim_step, ddim_time_pairs, logsnr_cosine
from tests.models.helpers import randomize_bn


def _model(tasks, db="PASCALContext"):
    cfg = EasyDict(model="TaskDiffusion", backbone="TaskDiffusion_vitT",
                   backbone_kwargs=dict(embed_dim=32, depth=4, num_heads=2, taps=[1, 2, 3]),
                   backbone_weights=None, drop_path_rate=0.0, final_embed_dim=16, timesteps=3, randsteps=1,
                   bit_scales={"all": 0.01}, module_layer=3, with_aux=True, db_name=db,
                   TASKS=dict(NAMES=tasks), TRAIN=dict(SCALE=[32, 48]), ignore_index=255)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    randomize_bn(model)
    return model


def _step_inputs(model):
    head = model.heads
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        levels = head.split_levels(model.backbone(x))
        feature_part = head.transforms.feature_part(levels)
        clean, _ = head.clean_task_features(levels)
    z = torch.randn(2, head.noisy_channels, 2, 3, generator=torch.Generator().manual_seed(2))
    return head, levels, feature_part, clean, z


def _ddim_step(head, levels, feature_part, clean, film):
    """The body of TaskDiffusionHead.sample for one step that is not the last: z_t -> (logits, z_next)."""
    def step(z, lam, lam_next):
        temb = head.time_mlp(lam)
        fused = head.fuse_noisy(levels, z, feature_part)
        logits = head.decode(fused, temb, clean, upsample=False, film=film)
        return logits, ddim_step(z, head.encode_predictions(logits), lam, lam_next)
    return step


@pytest.mark.parametrize("tasks,db", [(["semseg", "human_parts", "sal", "normals", "edge"], "PASCALContext"),
                                      (["semseg", "depth", "normals", "edge"], "NYUD")])
def test_one_ddim_step_is_one_graph_without_host_syncs(tasks, db):
    torch._dynamo.reset()
    model = _model(tasks, db)
    head, levels, feature_part, clean, z = _step_inputs(model)
    (t_now, t_next) = ddim_time_pairs(3)[0]
    lam, lam_next = logsnr_cosine(torch.full((2,), t_now)), logsnr_cosine(torch.full((2,), t_next))
    step = _ddim_step(head, levels, feature_part, clean, head.film_params())
    with torch.no_grad():
        eager_logits, eager_z = step(z, lam, lam_next)
        counted = count(lambda: step(z, lam, lam_next))
        assert counted.syncs == 0, "a DDIM step reads a tensor on the host"
        graph = torch.compile(step, backend="eager", fullgraph=True)  # raises on any graph break
        logits, z_next = graph(z, lam, lam_next)
    torch.testing.assert_close(z_next, eager_z, rtol=0, atol=0)
    for t in eager_logits:
        torch.testing.assert_close(logits[t], eager_logits[t], rtol=0, atol=0)
    # static shapes: a second step (other times, other z) reuses the graph, no recompilation
    from torch._dynamo.utils import counters

    before = dict(counters["stats"])
    (t_now, t_next) = ddim_time_pairs(3)[1]
    with torch.no_grad():
        graph(eager_z, logsnr_cosine(torch.full((2,), t_now)), logsnr_cosine(torch.full((2,), t_next)))
    assert counters["stats"].get("unique_graphs", 0) == before.get("unique_graphs", 0)


def test_whole_sampling_call_has_no_host_sync():
    model = _model(["semseg", "human_parts", "sal", "normals", "edge"])
    x = torch.randn(1, 3, 32, 48)
    noise = model.initial_noise(x, ["a"], 0)
    with torch.no_grad():
        counted = count(lambda: model(x, noise=noise))
    assert counted.syncs == 0 and counted.kernels > 0
