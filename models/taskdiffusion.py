"""TaskDiffusion: ViT backbone + joint-denoising diffusion decoder head (docs/method.md#joint-denoising-decoder, Appendix A).

`TaskDiffusionHead` (state-dict prefix `heads.`) holds every module of docs/method.md#module-inventory under the
original names. `TaskDiffusion` wraps backbone + head with the project's model API:

    model(images, targets=None, noise=None, times=None, generator=None) -> dict
      with targets: training forward  -> {'pred': {task: B×K×H×W}, 'aux': {task: B×K×H×W}}
      without:      DDIM sampling     -> {'pred': {task: B×K×H×W}}

Tasks are data: the head loops over the configured tasks and asks `data.tasks` what each one is
(discrete classes vs continuous channels, whether its embedding bypasses the fusion conv). The
noisy-map width is computed: M = E·(#separately embedded tasks) + C, E = C // 4.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from data.tasks import TaskInfo, task_infos
from models.backbone import build_backbone
from models.backbones import backbone_interface, decoder_grid
from models.decoder import (CondConv, CondConvMLP, ConvMLP, CrossTaskFPN, FilmParams, FilmTable, NoisyInputFusion,
                            SharedNoisyFPN, StackMemo, grouped_batch_norm, grouped_cond_mlp, grouped_conv, groupable,
                            same_shapes, task_feat_block)
from models.diffusion import (build_time_mlp, check_noise, ddim_step, ddim_time_pairs, draw_sample_noise,
                              draw_train_noise, draw_train_times, logsnr_cosine, noise_latent, to_bits,
                              upsample_bilinear)
from utils.config import cfg_get
from utils.config_schema import SCHEMA
from utils.seed import name_seed

def sample_rule(info: TaskInfo) -> tuple:
    """How a task's prediction becomes a label again before DDIM re-embeds it (data/tasks.py)."""
    rule = tuple(info.sample_rule)
    if rule[0] in ("argmax", "threshold") and not info.is_discrete:
        raise ValueError(f"task {info.name!r}: rule {rule[0]!r} needs a discrete task")
    return rule


def task_feat_groupable(seqs: Sequence[nn.Module]) -> bool:
    """Whether the clean-feature blocks (one per level and task) are all the standard TaskFeat with equal
    shapes (`task_feat_block`), so that they run as grouped ops."""
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.GELU, nn.Conv2d, nn.Conv2d, nn.BatchNorm2d, nn.GELU, nn.Conv2d)
    if not all(type(s) is nn.Sequential and len(s) == len(kinds)
               and all(type(m) is k for m, k in zip(s, kinds)) for s in seqs):
        return False
    if any(s[i].momentum is None for s in seqs for i in (1, 5)):
        return False
    return same_shapes(seqs, *(str(i) for i in range(len(kinds)))) and all(
        s[2].approximate == "none" and s[6].approximate == "none" for s in seqs)


def grouped_task_features(seqs: Sequence[nn.Sequential], levels: Sequence[torch.Tensor], num_tasks: int,
                          tasks: Sequence[str]) -> list[dict]:
    """Every level's and task's TaskFeat as one op per layer: levels L × (b c h w) -> L × {task: b c h w}.

    seqs: the blocks level-major (l, t). The first conv of every task reads its level (groups = L, T·c
    outputs each); the later layers run per (l, t) group on b (L T c) h w."""
    memo = StackMemo()
    L = len(levels)
    x = torch.cat(list(levels), dim=1)  # b (L c) h w
    y = grouped_conv([s[0] for s in seqs], x, memo, groups_in=L)  # b (L T c) h w
    y = F.gelu(grouped_batch_norm([s[1] for s in seqs], y, memo))
    y = grouped_conv([s[4] for s in seqs], grouped_conv([s[3] for s in seqs], y, memo), memo)
    y = F.gelu(grouped_batch_norm([s[5] for s in seqs], y, memo))
    y = grouped_conv([s[7] for s in seqs], y, memo)
    b, _, h, w = y.shape
    v = y.view(b, L, num_tasks, -1, h, w)
    return [{t: v[:, l, i] for i, t in enumerate(tasks)} for l in range(L)]


class TaskDiffusionHead(nn.Module):
    """The joint-denoising decoder (docs/method.md#joint-denoising-decoder).

    Inputs are backbone features F: B×(L·C)×h×w (level-major). Outputs are logits at 4h×4w
    (training and the last DDIM step); the wrapper resizes them to the input size.

    Subclass hooks (the MLoRE head overrides these; see models/mlore.py):

    * `build_feat_task(level) -> nn.Module`: the clean per-task feature module of one level,
      stored as `fpn_encoder.feat_task.{level}`. Default: `ModuleDict({task: TaskFeat})`.
    * `clean_task_features(levels, generator=None, **hook_kwargs) -> (P, info)`: runs those modules;
      `levels` is L × (B×C×h×w), P is L × {task: B×C×h×w}, `info` a dict of extra outputs (e.g.
      `{'route_1_prob': [...], 'route_2_prob': [...]}`) merged into the training output dict.
      Called once per training forward and once per sampling call (step 0; P is cached after).
      `hook_kwargs` are whatever extra keyword arguments the caller passed to `forward_train` /
      `sample` / the model (e.g. injected router noise).
    * `build_aux_body(task) -> nn.Module`: the aux head body `aux_heads.<task>.0`, mapping the
      ×4-upsampled concat of the L clean levels (B×L·C×4h×4w) to B×C×4h×4w. Default: ConvMLP(L·C, C).

    Hooks are called from `__init__`; a subclass that needs its own settings in them sets plain
    (non-Module) attributes before calling `super().__init__(...)`, which nn.Module allows.
    """

    def __init__(self, task_infos: Mapping[str, TaskInfo], embed_dim: int, num_levels: int = 4,
                 timesteps: int = 3, randsteps: int = 1, bit_scale: float = 0.01, module_layer: int = 3,
                 with_aux: bool = True, time_difference: float = 1.0, learned_sinusoidal_dim: int = 16,
                 sample_range: Sequence[float] = (0.0, 0.999), invalid_value: float = 255,
                 clamp_returned_depth: bool = True):
        super().__init__()
        if randsteps < 1:
            raise ValueError(f"randsteps must be >= 1, got {randsteps}")
        self.task_infos = dict(task_infos)
        self.tasks = list(self.task_infos)
        if not self.tasks:
            raise ValueError("TaskDiffusionHead: no tasks configured")
        c = int(embed_dim)
        e = c // 4
        self.embed_dim, self.label_dim, self.num_levels = c, e, int(num_levels)
        self.timesteps, self.randsteps, self.time_difference = int(timesteps), int(randsteps), time_difference
        self.bit_scale, self.with_aux = float(bit_scale), bool(with_aux)
        self.sample_range = tuple(float(v) for v in sample_range)
        self.invalid_value = invalid_value
        self.clamp_returned_depth = bool(clamp_returned_depth)
        self.sample_rules = {t: sample_rule(i) for t, i in self.task_infos.items()}
        # the sal-like tasks keep their own E channels; the others are fused to C by embed_all
        self.separate_tasks = [t for t, i in self.task_infos.items() if i.embed_separately]
        self.fused_tasks = [t for t, i in self.task_infos.items() if not i.embed_separately]
        self.noisy_channels = e * len(self.separate_tasks) + (c if self.fused_tasks else 0)
        outs = {t: int(i.num_outputs) for t, i in self.task_infos.items()}

        # Registration order as in the original state dicts.
        if self.with_aux:
            self.aux_heads = nn.ModuleDict({
                t: nn.Sequential(self.build_aux_body(t), nn.Conv2d(c, outs[t], 3, padding=1)) for t in self.tasks})
        self.embedding_tables = nn.ModuleDict({
            t: nn.Embedding(i.num_classes + 1, e) if i.is_discrete else nn.Conv2d(outs[t], e, 1)
            for t, i in self.task_infos.items()})
        self.invalid_embedding_tables = nn.ModuleDict({
            t: nn.Embedding(1, e) for t, i in self.task_infos.items() if not i.is_discrete})
        self.pred_heads = nn.ModuleDict({t: nn.Conv2d(c, outs[t], 3, padding=1) for t in self.tasks})
        self.embed_all = nn.Conv2d(e * len(self.fused_tasks), c, 1) if self.fused_tasks else None
        self.transforms = NoisyInputFusion(c, self.noisy_channels, self.num_levels)
        self.time_mlp = build_time_mlp(c, learned_sinusoidal_dim)
        self.encoders = nn.ModuleList(
            nn.ModuleDict({t: CondConvMLP(c, c, c, c, residual=True) for t in self.tasks})
            for _ in range(module_layer))
        self.fpn_encoder = CrossTaskFPN(self.tasks, c, c, self.num_levels, self.build_feat_task)
        # Fast path (default): exact rewrites of the expensive parts, see `set_fast_path`.
        self.fast_path = True
        # grouped ops on the fast path (config `grouped_ops`; one op per block over all tasks / levels; same
        # maths, fp32 rounding differs by ~1e-7 relative, so off by default: the paper configs stay bit-identical)
        self.grouped_ops = False  # also numbers the FiLM table slots (`film_blocks`)

    def set_fast_path(self, enabled: bool = True) -> "TaskDiffusionHead":
        """Choose between the fast path (default) and the reference path; both give the same numbers.

        The reference path runs the decoder op for op as docs/method.md#decoder-core and #ddim-sampling writes it (the original's way:
        cat + conv for the noisy-input fusion on every DDIM step, upsample then convolve in the last
        refinement layer and in the aux heads, one conv per task everywhere). The fast path:
          * caches the backbone half of the noisy-input fusion across DDIM steps;
          * runs the convs that read ×4-upsampled maps at the low resolution (exact identity, see
            models/decoder.py) and folds conv_2 of the last refinement layer / aux body into the
            3×3 prediction conv, cutting the last step's and the aux heads' MACs by ~10×;
          * applies the first TaskFeat conv of all tasks of a level as one conv (same input);
          * computes every block's FiLM scale/shift with one matmul per step and, in eval mode,
            folds BatchNorm + conv bias + FiLM into one multiply-add (decoder.FilmParams).
        The reference path exists for the benchmarks (speed ratio against the original's way) and
        the tests (fast == reference, values and gradients). Returns self.
        """
        self.fast_path = bool(enabled)
        return self

    @property
    def grouped_ops(self) -> bool:
        return self._grouped_ops

    @grouped_ops.setter
    def grouped_ops(self, enabled: bool) -> None:
        """Switch the grouped ops and renumber the FiLM table slots to match (`film_blocks`)."""
        self._grouped_ops = bool(enabled)
        for i, blk in enumerate(self.film_blocks()):
            blk.film_slot = i  # index into the per-step FiLM table (decoder.FilmParams)

    def film_blocks(self) -> list[nn.Module]:
        """The time-conditioned blocks of the decoder, in a fixed order (their FiLM table slots): module
        order; with grouped ops the shared FPN's blocks come first, block-major (the blocks of one grouped op
        side by side, so their FiLM coefficients are a view). The order changes the one FiLM matmul's
        rounding, so the default (per-task) path keeps the module order of before, bit for bit."""
        share = []
        if getattr(self, "_grouped_ops", False) and isinstance(getattr(self.fpn_encoder, "share_fpn", None),
                                                                SharedNoisyFPN):
            convs = self.fpn_encoder.share_fpn.fpn_conv
            share = [convs[l][j] for j in range(len(convs[0])) for l in range(len(convs))]
        first = {id(m) for m in share}
        mods = share + [m for m in self.fpn_encoder.modules() if id(m) not in first] + list(self.encoders.modules())
        return [m for m in mods if isinstance(m, (CondConv, CondConvMLP))]

    def film_params(self) -> FilmParams | None:
        """Concatenated FiLM projections for the fast path (once per forward / sampling call)."""
        blocks = self.film_blocks()
        if not self.fast_path or not blocks or any(getattr(b, "film_slot", None) != i for i, b in enumerate(blocks)):
            return None
        return FilmParams(blocks)

    # ---------------------------------------------------------------------------------- hooks
    def build_feat_task(self, level: int) -> nn.Module:
        return nn.ModuleDict({t: task_feat_block(self.embed_dim) for t in self.tasks})

    def build_aux_body(self, task: str) -> nn.Module:
        return ConvMLP(self.num_levels * self.embed_dim, self.embed_dim)

    def clean_task_features(self, levels: Sequence[torch.Tensor], generator: torch.Generator | None = None,
                            **hook_kwargs) -> tuple[list[dict], dict]:
        if hook_kwargs:
            raise TypeError(f"TaskDiffusionHead got unexpected arguments {sorted(hook_kwargs)}")
        feat_task = self.fpn_encoder.feat_task
        if not self.fast_path:
            return [{t: feat_task[l][t](x) for t in self.tasks} for l, x in enumerate(levels)], {}
        seqs = [feat_task[l][t] for l in range(len(levels)) for t in self.tasks]
        if self.grouped_ops and task_feat_groupable(seqs):
            return grouped_task_features(seqs, levels, len(self.tasks), self.tasks), {}
        clean = []
        for l, x in enumerate(levels):
            blocks = [feat_task[l][t] for t in self.tasks]
            if not all(isinstance(b, nn.Sequential) and isinstance(b[0], nn.Conv2d) for b in blocks):
                clean.append({t: b(x) for t, b in zip(self.tasks, blocks)})
                continue
            # the first conv of every task reads the same level: one conv with T·C outputs
            firsts = [b[0] for b in blocks]
            y = F.conv2d(x, torch.cat([m.weight for m in firsts]), torch.cat([m.bias for m in firsts]),
                         padding=firsts[0].padding)  # b (T c) h w
            feats = {}
            for t, b, yt in zip(self.tasks, blocks, y.chunk(len(blocks), dim=1)):
                for i in range(1, len(b)):
                    yt = b[i](yt)
                feats[t] = yt
            clean.append(feats)
        return clean, {}

    # ------------------------------------------------------------------------ label encoding
    def _embed_index(self, task: str, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_tables[task](labels).permute(0, 3, 1, 2)  # b h w e -> b e h w

    def _fuse_embeddings(self, embs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[separate embeddings (E each) | embed_all(concat(others)) (C)] -> bits, B×M×h×w (float32)."""
        parts = [embs[t] for t in self.separate_tasks]
        if self.fused_tasks:
            parts.append(self.embed_all(torch.cat([embs[t] for t in self.fused_tasks], dim=1)))
        return to_bits(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0], self.bit_scale)

    def _no_autocast(self, ref: torch.Tensor):
        """Label embeddings and bits stay float32 under autocast: they are tiny (low resolution, E/C
        channels) and the ±bit_scale bits would lose most of their resolution in bf16."""
        return torch.autocast(ref.device.type, enabled=False)

    def encode_labels(self, targets: Mapping[str, torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Ground truths (B×C×H×W, as in a batch) -> clean latent bits x0, B×M×h×w (docs/method.md#label-embedding-and-bit-encoding)."""
        with self._no_autocast(next(iter(targets.values()))):
            return self._encode_labels(targets, size)

    def _encode_labels(self, targets: Mapping[str, torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        embs = {}
        for t, info in self.task_infos.items():
            if t not in targets:
                raise KeyError(f"training forward: no ground truth for task {t!r} in targets "
                               f"(have {sorted(targets)})")
            gt = targets[t].to(self.embedding_tables[t].weight.dtype)  # float32 (float64 in tests)
            if info.is_discrete:
                lab = F.interpolate(gt, size=tuple(size), mode="nearest")[:, 0].long()  # b h w
                lab = torch.where(lab == int(info.ignore_value), torch.full_like(lab, info.num_classes), lab)
                embs[t] = self._embed_index(t, lab)
            else:
                # share of channels marked invalid (the original tests 255 for every continuous task;
                # depth's 0 stays a value here, it is masked only in the loss)
                invalid = (gt == self.invalid_value).float().mean(dim=1, keepdim=True)  # b 1 H W
                g = upsample_bilinear(gt, size)
                m = upsample_bilinear(invalid, size)
                e_inv = self.invalid_embedding_tables[t].weight.view(1, -1, 1, 1)
                embs[t] = m * e_inv + (1 - m) * self.embedding_tables[t](g)
        return self._fuse_embeddings(embs)

    def prediction_labels(self, task: str, logits: torch.Tensor) -> torch.Tensor:
        """A prediction mapped back to label space: class indices (B×h×w) or values (B×C×h×w)."""
        rule = self.sample_rules[task]
        kind = rule[0]
        if kind == "argmax":
            return logits.argmax(dim=1)
        if kind == "threshold":
            return (torch.softmax(logits, dim=1)[:, 1] > rule[1]).long()
        if kind == "clamp":
            return logits.clamp(rule[1], rule[2])
        if kind == "sigmoid":
            return torch.sigmoid(logits)
        if kind == "l2":
            return F.normalize(logits, p=2, dim=1)
        if kind == "identity":
            return logits
        raise ValueError(f"task {task!r}: unknown sample rule {rule!r}")

    def encode_predictions(self, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Predicted logits -> bits x̂0 (docs/method.md#ddim-sampling step 4; no invalid-embedding blend at inference)."""
        embs = {}
        with self._no_autocast(next(iter(logits.values()))):
            for t, info in self.task_infos.items():
                lab = self.prediction_labels(t, logits[t].to(torch.promote_types(logits[t].dtype, torch.float32)))
                embs[t] = self._embed_index(t, lab) if info.is_discrete else self.embedding_tables[t](lab)
            return self._fuse_embeddings(embs)

    # ----------------------------------------------------------------------------- decoder core
    def split_levels(self, features: torch.Tensor) -> list[torch.Tensor]:
        if features.shape[1] != self.num_levels * self.embed_dim:
            raise ValueError(f"head: features have {features.shape[1]} channels, expected "
                             f"{self.num_levels}×{self.embed_dim} (levels × final_embed_dim)")
        return list(features.chunk(self.num_levels, dim=1))

    def decode(self, fused: Sequence[torch.Tensor], temb: torch.Tensor, clean: Sequence[dict],
               upsample: bool, film: FilmParams | None = None) -> dict[str, torch.Tensor]:
        """Spec docs/method.md#decoder-core steps 2-6: gating FPN, refinement (×4 before the last layer if upsample), heads.

        film: this call's concatenated FiLM projections (fast path; built here when not given).
        """
        if self.fast_path:
            film = film if film is not None else self.film_params()
            if film is not None:
                temb = film.table(temb)  # every block's FiLM coefficients from one matmul
            if self.grouped_ok(temb):
                return self.decode_grouped(fused, temb, clean, upsample)
        if isinstance(fused, torch.Tensor):  # stacked b (L c) h w (fast path's fusion)
            fused = list(fused.chunk(self.num_levels, dim=1))
        x = self.fpn_encoder(fused, temb, clean)
        h, w = fused[0].shape[-2:]
        last = len(self.encoders) - 1
        if not self.fast_path or last < 0:
            for k, layer in enumerate(self.encoders):
                up = upsample and k == last
                for t in self.tasks:
                    xt = upsample_bilinear(x[t], (4 * h, 4 * w)) if up else x[t]
                    x[t] = layer[t](xt, temb)
            return {t: self.pred_heads[t](x[t]) for t in self.tasks}
        for k in range(last):
            layer = self.encoders[k]
            for t in self.tasks:
                x[t] = layer[t](x[t], temb)
        # last layer + prediction head together: the ×4 work runs at low resolution (exact rewrite)
        size = (4 * h, 4 * w) if upsample else None
        return {t: self.encoders[last][t].forward_into_head(x[t], temb, self.pred_heads[t], size)
                for t in self.tasks}

    def aux_forward(self, clean: Sequence[dict], size: Sequence[int]) -> dict[str, torch.Tensor]:
        """Aux logits from the ×4-upsampled concat of the clean levels of each task (docs/method.md#training-forward step 6)."""
        out = {}
        memo = StackMemo()  # the fixed bilinear matrices, once for every task
        for t in self.tasks:
            y = torch.cat([p[t] for p in clean], dim=1)  # b (L c) h w
            seq = self.aux_heads[t]
            if self.fast_path and len(seq) == 2 and type(seq[0]) is ConvMLP and isinstance(seq[1], nn.Conv2d):
                out[t] = seq[0].forward_into_head(y, seq[1], size, memo)  # the upsampled map is never built
            else:
                out[t] = seq(upsample_bilinear(y, size))
        return out

    def fuse_noisy(self, levels: Sequence[torch.Tensor], z: torch.Tensor,
                   feature_part: Sequence[torch.Tensor] | torch.Tensor | None = None):
        """NoisyInputFusion on the fast path (backbone half cacheable) or the reference path: L × (b c h w),
        or b (L c) h w when feature_part is the stacked form (`feature_part`)."""
        if not self.fast_path:
            return self.transforms.forward_concat(levels, z)
        if isinstance(feature_part, torch.Tensor):
            return self.transforms.forward_stacked(feature_part, z)
        return self.transforms(levels, z, feature_part=feature_part)

    def feature_part(self, levels: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """The backbone half of the noisy-input fusion (once per sampling call): stacked b (L c) h w when
        every level has the same shape (one grouped conv), else per level."""
        if self.grouped_ops and all(tuple(x.shape) == tuple(levels[0].shape) for x in levels):
            return self.transforms.feature_part_stacked(levels)
        return self.transforms.feature_part(levels)

    # ------------------------------------------------------------------- grouped decoder (fast path)
    def grouped_ok(self, table) -> bool:
        """Whether decode can run every task / level as one op (`decode_grouped`): a FiLM table, the
        standard gating FPN and refinement blocks with equal shapes, and a non-empty refinement."""
        if not self.grouped_ops or not isinstance(table, FilmTable) or len(self.encoders) < 1:
            return False
        key = ("grouped_ok", self.training)
        if key not in table.params.memo:
            table.params.memo[key] = (type(self.fpn_encoder).forward is CrossTaskFPN.forward
                                      and self.fpn_encoder.grouped_ok(table)
                                      and all(groupable([layer[t] for t in self.tasks], table) for layer in self.encoders))
        return table.params.memo[key]

    def decode_grouped(self, fused, table: FilmTable, clean: Sequence[dict], upsample: bool) -> dict:
        """`decode` with the same maths, every task (and level) of a block in one op (models/decoder.py,
        grouped ops). fused: b (L c) h w or L × (b c h w)."""
        if not isinstance(fused, torch.Tensor):
            fused = torch.cat(list(fused), dim=1)
        tasks, L = self.tasks, self.num_levels
        src = torch.stack([clean[l][k] for l in range(L) for k in tasks], dim=1)  # b (L T) c h w
        b, _, c, h, w = src.shape
        x = self.fpn_encoder.forward_grouped(fused, table, src.view(b, L, 1, len(tasks), c, h, w))  # b (T c) h w
        last = len(self.encoders) - 1
        for k in range(last):
            x = grouped_cond_mlp([self.encoders[k][t] for t in tasks], x, table)
        if not upsample:
            x = grouped_cond_mlp([self.encoders[last][t] for t in tasks], x, table)
            return {t: self.pred_heads[t](xt) for t, xt in zip(tasks, x.chunk(len(tasks), dim=1))}
        # last layer + prediction head together: the ×4 work runs at low resolution (exact rewrite)
        size = (4 * h, 4 * w)
        return {t: self.encoders[last][t].forward_into_head(xt, table, self.pred_heads[t], size)
                for t, xt in zip(tasks, x.chunk(len(tasks), dim=1))}

    # --------------------------------------------------------------------------------- training
    def forward_train(self, features: torch.Tensor, targets: Mapping[str, torch.Tensor],
                      times: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                      generator: torch.Generator | None = None, return_intermediates: bool = False,
                      **hook_kwargs) -> dict:
        """Training forward (docs/method.md#training-forward) on features B×(L·C)×h×w; returns logits at 4h×4w.

        times (B,) and noise (B×M×h×w) may be injected; otherwise they are drawn (times first, then
        noise, in the original's layout) from `generator` or the global RNG.
        """
        b, _, h, w = features.shape
        levels = self.split_levels(features)
        x0 = self.encode_labels(targets, (h, w))  # b m h w
        if times is None:
            times = draw_train_times(b, features.device, generator, self.sample_range)
        elif tuple(times.shape) != (b,):
            raise ValueError(f"forward_train: times must have shape ({b},), got {tuple(times.shape)}")
        if noise is None:
            noise = draw_train_noise(x0.shape, features.device, generator)
        check_noise(noise, x0.shape, "forward_train")
        times = times.to(features.device, torch.float32)
        lam = logsnr_cosine(times)
        z = noise_latent(x0, lam, noise.to(x0.device))
        temb = self.time_mlp(lam)
        fused = self.fuse_noisy(levels, z)
        clean, info = self.clean_task_features(levels, generator=generator, **hook_kwargs)
        out = {"pred": self.decode(fused, temb, clean, upsample=True)}
        if self.with_aux:
            out["aux"] = self.aux_forward(clean, (4 * h, 4 * w))
        out.update(info)
        if return_intermediates:
            out["intermediates"] = {"times": times, "noise": noise, "gt_bits": x0, "noised_gt": z}
        return out

    # --------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, features: torch.Tensor, noise=None, generator: torch.Generator | None = None,
               return_intermediates: bool = False, samples: int = 1, samples_chunk: int | None = None,
               **hook_kwargs) -> dict:
        """DDIM sampling (docs/method.md#ddim-sampling, #sample-ensembles).

        Returns {'pred': {task: B×K×4h×4w}}: the logits averaged over every trajectory (randsteps R and,
        when samples > 1, the N members), and with samples = N > 1 also {'draws': {task: N×B×K×4h×4w}},
        member n being the R-trajectory logit average of the original's `randsteps` (R = 1: one draw).

        The backbone features and the clean task features are used once per image: the backbone half of
        the noisy-input fusion and the clean per-task features are computed at batch B and repeated to the
        trajectories, so only the N·R noisy maps run through the time-conditioned decoder, `samples_chunk`
        members (×R×B trajectories) at a time (None: all at once) so memory stays bounded.

        noise: the initial noisy maps, (N·R·B)×M×h×w in (n r b) layout, or a callable
        `(start, stop) -> ((stop-start)·R·B)×M×h×w` giving members start..stop-1 (TaskDiffusion.noise_source;
        chunk by chunk, so the noise is never all in memory); drawn with one torch.randn otherwise.
        The final DDIM update of the original is skipped: its result is never used.
        """
        b, _, h, w = features.shape
        r, n = self.randsteps, int(samples)
        if n < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        chunk = n if not samples_chunk else max(1, min(n, int(samples_chunk)))
        shape = (n * r * b, self.noisy_channels, h, w)
        if noise is None:  # drawn before anything else, as the original (the RNG order stays its own)
            noise = draw_sample_noise(shape, features.device, generator)
        if torch.is_tensor(noise):
            full = check_noise(noise, shape, "sample").to(features.device)
            per = r * b
            noise_fn = lambda lo, hi: full[lo * per:hi * per]  # noqa: E731
        else:
            noise_fn = noise
        levels = self.split_levels(features)  # L × (b c h w), once per image
        # the backbone half of the noisy-input fusion and the clean task features: once per image
        feature_part = self.feature_part(levels) if self.fast_path else None
        clean, _ = self.clean_task_features(levels, generator=generator, **hook_kwargs)
        film = self.film_params()
        members, inter = [], {"mask_t": [], "logits_hw": []}
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            z = check_noise(noise_fn(lo, hi), ((hi - lo) * r * b, self.noisy_channels, h, w), "sample")
            logits, mask_t, logits_hw = self.denoise(levels, feature_part, clean, z.to(features.device),
                                                     (hi - lo) * r, film)
            # (k r b) K H W -> k b K H W: each member the average of its R trajectories (randsteps)
            members.append({t: v.view(hi - lo, r, b, *v.shape[1:]).mean(dim=1) if r > 1 else
                            v.view(hi - lo, b, *v.shape[1:]) for t, v in logits.items()})
            inter["mask_t"].append(mask_t)
            inter["logits_hw"] = logits_hw
        draws = members[0] if len(members) == 1 else \
            {t: torch.cat([m[t] for m in members], dim=0) for t in members[0]}  # n b K H W
        out = {"pred": {t: v[0] if n == 1 else v.mean(dim=0) for t, v in draws.items()}}
        if n > 1:
            out["draws"] = draws
        if return_intermediates:
            steps = inter["mask_t"][0] if len(inter["mask_t"]) == 1 else \
                [torch.cat(zs, dim=0) for zs in zip(*inter["mask_t"])]
            out["intermediates"] = {"mask_t": steps, "noise": steps[0], "logits_hw": inter["logits_hw"]}
        return out

    @staticmethod
    def _repeat(x: torch.Tensor, k: int) -> torch.Tensor:
        """b ... -> (k b) ...: a once-per-image tensor for k trajectories (a copy, no compute)."""
        return x if k == 1 else x.repeat(k, *([1] * (x.dim() - 1)))

    def denoise(self, levels: Sequence[torch.Tensor], feature_part, clean: Sequence[dict], z: torch.Tensor,
                k: int, film: FilmParams | None = None) -> tuple:
        """The DDIM loop for k trajectories per image: z (k b)×M×h×w starting noise; levels, feature_part,
        clean at batch b (repeated here). Returns (logits {task: (k b)×K×4h×4w}, noisy maps per step,
        logit sizes per step)."""
        dev = z.device
        nb = z.shape[0]
        if self.fast_path:  # stacked b (L c) h w (grouped ops) or L × (b c h w)
            feature_part = self._repeat(feature_part, k) if torch.is_tensor(feature_part) else \
                [self._repeat(f, k) for f in feature_part]
        else:  # the reference path concatenates the backbone levels with z on every step
            levels = [self._repeat(x, k) for x in levels]
        clean = [{t: self._repeat(v, k) for t, v in p.items()} for p in clean]
        pairs = ddim_time_pairs(self.timesteps, self.time_difference)
        mask_t, logits, logits_hw = [], {}, []
        for s, (t_now, t_next) in enumerate(pairs):
            last = s == len(pairs) - 1
            mask_t.append(z)
            lam = logsnr_cosine(torch.full((nb,), t_now, device=dev))
            temb = self.time_mlp(lam)
            fused = self.fuse_noisy(levels, z, feature_part)
            logits = self.decode(fused, temb, clean, upsample=last, film=film)
            logits_hw.append(tuple(next(iter(logits.values())).shape[-2:]))
            if last:
                break
            z = self.ddim_update(z, logits, lam, logsnr_cosine(torch.full((nb,), t_next, device=dev)))
        if self.clamp_returned_depth:
            # the original clamps in place while re-encoding, so its returned logits are clamped
            for t, rule in self.sample_rules.items():
                if rule[0] == "clamp":
                    logits[t] = self.prediction_labels(t, logits[t])
        return logits, mask_t, logits_hw

    def ddim_update(self, z: torch.Tensor, logits: Mapping[str, torch.Tensor], lam: torch.Tensor,
                    lam_next: torch.Tensor) -> torch.Tensor:
        """One DDIM step (docs/method.md#ddim-sampling 4-5): the predictions re-embedded as bits x̂0, then
        z_next = a'·x̂0 + s'·(z - a·x̂0)/s."""
        return ddim_step(z, self.encode_predictions(logits), lam, lam_next)

    def forward(self, features: torch.Tensor, targets: Mapping[str, torch.Tensor] | None = None, **kwargs):
        if targets is not None:
            return self.forward_train(features, targets, **kwargs)
        return self.sample(features, **kwargs)


class BackboneHeadModel(nn.Module):
    """Backbone + multi-task head, the layout every model here shares (and the original's state-dict
    prefixes `backbone.` / `heads.`); subclasses define forward."""

    draws_samples = False  # a deterministic model: N samples of it would be one prediction

    def __init__(self, backbone: nn.Module, heads: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    @property
    def head(self) -> nn.Module:
        return self.heads

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """images B×3×H×W -> backbone features B×(L·C)×H/s×W/s (s: the backbone's decoder_stride)."""
        return self.backbone(images)

    def initial_noise(self, images: torch.Tensor, names: Sequence[str], seed: int, samples: int = 1) -> torch.Tensor | None:
        """The starting noise of sampling for a batch, or None: a model without diffusion draws none."""
        return None

    def noise_source(self, images: torch.Tensor, names: Sequence[str], seed: int, samples: int = 1):
        """The chunk-by-chunk form of initial_noise, or None: a model without diffusion samples nothing
        (its N draws would all be the same prediction)."""
        return None

    @staticmethod
    def resize_outputs(out: dict, size: Sequence[int]) -> dict:
        """Every logit map under 'pred' / 'aux' bilinearly resized to the input size (in place)."""
        for key in ("pred", "aux"):
            if key in out:
                out[key] = {t: upsample_bilinear(v, size) for t, v in out[key].items()}
        return out


class TaskDiffusion(BackboneHeadModel):
    """Backbone + diffusion head; outputs resized to the input size (bilinear, align_corners=False)."""

    draws_samples = True  # sampling is stochastic: N members per image make an ensemble (engine/predict.py)

    def initial_noise(self, images: torch.Tensor, names: Sequence[str], seed: int, samples: int = 1) -> torch.Tensor:
        """The DDIM starting noise for the padded batch `images` (B×3×H×W): (N·randsteps·B)×M×H/s×W/s
        float32 on the images' device in (n r b) layout (N = samples), member n of image j drawn from its
        own seed `member_seed(seed, names[j], n)` (s: the backbone's decoder stride, read from its declared
        interface, models/backbones.py; M: the noisy-map width).

        Why per image and member: noise drawn per batch would make predictions and metrics depend on the
        batch size, on how images are split over ranks and on how the members are chunked; this way an
        image's member n always starts from the same noise for a seed. Member 0 is seeded as before the
        ensembles existed, so N = 1 gives the earlier predictions bit for bit. Why here: only the model
        knows its noise shape, so callers never read the head's or the backbone's sizes.
        """
        return self.noise_source(images, names, seed, samples)(0, int(samples))

    def noise_source(self, images: torch.Tensor, names: Sequence[str], seed: int, samples: int = 1):
        """A callable (start, stop) -> the initial_noise of members start..stop-1 (((stop-start)·R·B)×M×h×w),
        for chunked sampling (`TaskDiffusionHead.sample` calls it chunk by chunk): the same numbers as
        initial_noise's slice, drawn only when needed."""
        r, m = int(self.heads.randsteps), int(self.heads.noisy_channels)
        b = images.shape[0]
        h, w = decoder_grid(self.backbone, images.shape[-2:])
        names = [str(n) for n in names]
        if len(names) != b:
            raise ValueError(f"initial_noise: {len(names)} names for a batch of {b} images")

        def draw(start: int, stop: int) -> torch.Tensor:
            z = torch.empty((stop - start, r, b, m, h, w), dtype=torch.float32)
            for k in range(start, stop):
                for j, name in enumerate(names):
                    g = torch.Generator()
                    g.manual_seed(member_seed(seed, name, k))
                    z[k - start, :, j] = torch.randn((r, m, h, w), generator=g)
            return z.reshape((stop - start) * r * b, m, h, w).to(images.device)

        return draw

    def forward(self, images: torch.Tensor, targets: Mapping[str, torch.Tensor] | None = None,
                noise=None, times: torch.Tensor | None = None,
                generator: torch.Generator | None = None, return_intermediates: bool = False,
                samples: int = 1, samples_chunk: int | None = None, **head_kwargs) -> dict:
        """Training forward with targets; else DDIM sampling of `samples` members per image (the backbone
        runs once per image whatever `samples` is), 'draws' {task: N×B×K×H×W} added when samples > 1."""
        feats = self.forward_features(images)
        if targets is not None:
            out = self.heads.forward_train(feats, targets, times=times, noise=noise, generator=generator,
                                           return_intermediates=return_intermediates, **head_kwargs)
        else:
            if times is not None:
                raise ValueError("times apply to the training forward only (pass targets); sampling "
                                 "uses the fixed DDIM time pairs")
            out = self.heads.sample(feats, noise=noise, generator=generator,
                                    return_intermediates=return_intermediates, samples=samples,
                                    samples_chunk=samples_chunk, **head_kwargs)
        self.resize_outputs(out, images.shape[-2:])
        if "draws" in out:  # n b K h w -> n b K H W
            out["draws"] = {t: upsample_bilinear(v.flatten(0, 1), images.shape[-2:]).view(*v.shape[:3], *images.shape[-2:])
                            for t, v in out["draws"].items()}
        if return_intermediates:
            out["intermediates"]["backbone_feat"] = feats
        return out


def member_seed(seed: int, name: str, member: int) -> int:
    """The seed of ensemble member `member` of the image `name`: member 0 is `name_seed(seed, name)` (the seed
    of single-sample prediction), member n > 0 that of the name tagged with n."""
    return name_seed(seed, name) if member == 0 else name_seed(seed, f"{name}\x1fmember{int(member)}")


# --------------------------------------------------------------------------------------------------
# Building from a config
# --------------------------------------------------------------------------------------------------


def config_task_infos(cfg) -> dict:
    """{task: TaskInfo} for cfg.TASKS.NAMES on cfg.db_name, in canonical order."""
    db = cfg_get(cfg, "db_name") or cfg_get(cfg, "train_db_name")
    tasks_cfg = cfg_get(cfg, "TASKS")
    names = cfg_get(tasks_cfg, "NAMES") if tasks_cfg is not None else None
    if not db or not names:
        raise ValueError("config needs db_name (or train_db_name) and TASKS.NAMES to build the model")
    return task_infos(db, names)


def head_kwargs_from_config(cfg, num_levels: int = 4) -> dict:
    """TaskDiffusionHead constructor arguments from a config (shared with subclasses' builders)."""
    bit_scales = cfg_get(cfg, "bit_scales") or {"all": 0.01}
    return dict(
        task_infos=config_task_infos(cfg),
        embed_dim=int(cfg_get(cfg, "final_embed_dim")),
        num_levels=num_levels,
        timesteps=int(cfg_get(cfg, "timesteps", SCHEMA["timesteps"].default)),  # one default: the schema's
        randsteps=int(cfg_get(cfg, "randsteps", SCHEMA["randsteps"].default)),
        bit_scale=float(cfg_get(bit_scales, "all", 0.01)),
        module_layer=int(cfg_get(cfg, "module_layer", 3)),
        with_aux=bool(cfg_get(cfg, "with_aux", True)),
        invalid_value=cfg_get(cfg, "ignore_index", 255),
        clamp_returned_depth=bool(cfg_get(cfg, "clamp_returned_depth", True)),
    )


def build_backbone_checked(cfg) -> tuple:
    """(backbone, its declared interface) for a config: the head reads its level count and width from the
    declaration (models/backbones.py), which is checked against cfg.final_embed_dim here."""
    if cfg_get(cfg, "final_embed_dim") is None:
        raise ValueError("config needs final_embed_dim (the decoder width C)")
    backbone = build_backbone(cfg)
    spec = backbone_interface(backbone)
    if spec.out_dim != int(cfg_get(cfg, "final_embed_dim")):
        raise ValueError(f"backbone {type(backbone).__name__} projects to {spec.out_dim} channels but "
                         f"final_embed_dim is {cfg_get(cfg, 'final_embed_dim')}")
    return backbone, spec


def build_taskdiffusion_model(cfg, head_cls: type = TaskDiffusionHead, backbone: tuple | None = None,
                              **extra_head_kwargs) -> TaskDiffusion:
    """Backbone from cfg (models.backbone) + `head_cls` built from the same config.

    backbone: an already built (module, BackboneSpec) pair from `build_backbone_checked` (builders whose
    head arguments depend on the backbone's declaration, e.g. MLoRE's token count, build it first)."""
    module, spec = build_backbone_checked(cfg) if backbone is None else backbone
    heads = head_cls(**head_kwargs_from_config(cfg, spec.num_levels), **extra_head_kwargs)
    heads.grouped_ops = bool(cfg.get("grouped_ops", False) if isinstance(cfg, Mapping) else
                             getattr(cfg, "grouped_ops", False))
    return TaskDiffusion(module, heads)
