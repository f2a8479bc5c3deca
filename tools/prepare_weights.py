"""Put the ImageNet backbone weights where the configs look for them (`backbone_weights:`).

    python -m tools.prepare_weights --backbone TaskDiffusion_vitL --out pretrained/          # with network
    python -m tools.prepare_weights --backbone TaskDiffusion_vitL --from model.safetensors    # offline

--backbone is a config backbone name (TaskDiffusion_vitL/vitB/vitS, mapped to their timm tag by
models/backbone.py) or a timm tag (`vit_large_patch16_384.augreg_in21k_ft_in1k`). The file is written as
`<out>/<timm tag>.safetensors`, the name the shipped configs use (configs/pascal/vitL.yml:
`backbone_weights: pretrained/vit_large_patch16_384.augreg_in21k_ft_in1k.safetensors`); --out may also be
a file name ending in .safetensors.

The shipped paper-size configs and the file each expects under pretrained/ (README "Backbones"):

    config                                            --backbone (timm tag)
    configs/{pascal,nyud}/vitL*.yml                   TaskDiffusion_vitL = vit_large_patch16_384.augreg_in21k_ft_in1k
    configs/pascal/vitB.yml                           TaskDiffusion_vitB = vit_base_patch16_384.augreg_in21k_ft_in1k
    configs/{pascal,nyud}/swinL.yml                   swin_large_patch4_window12_384.ms_in22k_ft_in1k
    configs/{pascal,nyud}/dinov2L.yml                 vit_large_patch14_dinov2.lvd142m
    configs/pascal/convnextL.yml                      convnext_large.fb_in22k_ft_in1k_384

Any timm tag works the same way (`backbone: timm` configs name it in backbone_kwargs.timm_name); the file
holds timm's own state dict, so Swin window tables, DINOv2 position tables and ConvNeXt layouts are the
checkpoint's and the backbone adapts them when it loads (models/timm_backbone.py).

Without --from, timm fetches the weights from its hub (`timm.create_model(tag, pretrained=True)`), which
needs network (or the file already in the Hugging Face cache). With --from, a file downloaded elsewhere
(`model.safetensors` from https://huggingface.co/timm/<tag>, a torch.save'd state dict `.pth/.pt/.bin`,
or the original JAX `.npz`) is checked key by key and shape by shape against the timm model built with
pretrained=False, and written as safetensors. Why check here: a wrong file (another size, another
architecture) otherwise surfaces only when training starts, as a long load error, or not at all for
keys the loader tolerates. The classifier head may be absent or sized for other classes (the backbone
never uses it); every other key must match.

A wrong file or an unknown backbone is one `error:` line with exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# the classifier (ViT `head.`, Swin `head.fc.`, ConvNeXt `head.norm.` / `head.fc.`): the backbones never use it
OPTIONAL_PREFIXES = ("head.", "head_drop.")
WRAPPER_KEYS = ("state_dict", "model", "module")
STRIP_PREFIXES = ("module.", "model.")


class WeightsError(Exception):
    """A user-fixable problem; the message is one line."""


def timm_tag(backbone: str) -> str:
    """The timm tag of a config backbone name, or `backbone` itself when it is already a timm model name."""
    from models.backbone import VARIANTS

    if backbone in VARIANTS:
        tag = VARIANTS[backbone]["timm_name"]
        if not tag:
            raise WeightsError(f"backbone {backbone}: has no ImageNet weights (sizes come from backbone_kwargs); "
                               f"use backbone_weights: null, or a timm tag with --backbone")
        return tag
    import timm

    if not timm.is_model(backbone.split(".")[0]):
        raise WeightsError(f"backbone {backbone!r}: neither a config backbone ({', '.join(VARIANTS)}) nor a timm "
                           f"model name; give one of those or a timm tag such as "
                           f"vit_large_patch16_384.augreg_in21k_ft_in1k")
    return backbone


def reference_shapes(tag: str) -> dict:
    """{key: shape} of the timm model `tag`, built without weights (on the meta device when possible)."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(tag, pretrained=False)
    except Exception:  # noqa: BLE001 - some models cannot be built on meta: build them for real
        model = timm.create_model(tag, pretrained=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _unwrap(sd: dict) -> dict:
    """The tensor dict inside a checkpoint ({'model': ...}, {'state_dict': ...}) without DDP prefixes."""
    import torch

    for _ in range(2):
        inner = next((sd[k] for k in WRAPPER_KEYS if isinstance(sd.get(k), dict)), None)
        if inner is None:
            break
        sd = inner
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    for prefix in STRIP_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_weights_file(path: Path, tag: str) -> dict:
    """A state dict from .safetensors, .pth/.pt/.bin (tensors only, no code run) or a JAX .npz."""
    import torch

    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return _unwrap(load_file(str(path), device="cpu"))
        if suffix in (".pth", ".pt", ".bin"):
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(sd, dict):
                raise WeightsError(f"--from {path}: holds a {type(sd).__name__}, not a state dict; save "
                                   f"model.state_dict()")
            return _unwrap(sd)
        if suffix == ".npz":
            import timm

            model = timm.create_model(tag, pretrained=False)
            model.load_pretrained(str(path))  # timm's own JAX converter; raises on missing arrays
            return model.state_dict()
    except WeightsError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one line naming the file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise WeightsError(f"--from {path}: cannot read it as {suffix} ({type(err).__name__}: {first[:200]}); "
                           f"give the timm model's model.safetensors, a saved state dict or the .npz") from None
    raise WeightsError(f"--from {path}: unsupported file type {suffix or '(none)'}; use .safetensors, .pth, "
                       f".pt, .bin or .npz")


def compare(sd: dict, shapes: dict) -> tuple:
    """(missing, unexpected, wrong_shape) key lists of `sd` against the reference shapes; the classifier
    head is optional and may have any size."""
    optional = lambda k: k.startswith(OPTIONAL_PREFIXES)  # noqa: E731
    missing = sorted(k for k in shapes if k not in sd and not optional(k))
    unexpected = sorted(k for k in sd if k not in shapes)
    wrong = sorted(f"{k} {tuple(sd[k].shape)}!={shapes[k]}" for k in sd
                   if k in shapes and not optional(k) and tuple(sd[k].shape) != shapes[k])
    return missing, unexpected, wrong


def hub_page(tag: str) -> str:
    """The Hugging Face page holding the weights of `tag` (timm resolves a bare model name to its default
    pretrained tag), for the advice in error messages."""
    try:
        from timm.models import get_pretrained_cfg

        hub_id = getattr(get_pretrained_cfg(tag), "hf_hub_id", None)
    except Exception:  # noqa: BLE001 - only advice: fall back to the usual naming
        hub_id = None
    return f"https://huggingface.co/{hub_id or 'timm/' + tag}"


def mismatch_message(path, tag, missing, unexpected, wrong, shown: int = 3) -> str:
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            more = f", +{len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {what} key(s) ({', '.join(keys[:shown])}{more})")
    return (f"--from {path}: does not fit timm model {tag}: {'; '.join(parts)}; give the checkpoint of exactly "
            f"this model (e.g. model.safetensors from {hub_page(tag)})")


def fetch_from_hub(tag: str) -> dict:
    """timm's pretrained weights (network, or the Hugging Face cache)."""
    import timm

    try:
        return timm.create_model(tag, pretrained=True).state_dict()
    except Exception as err:  # noqa: BLE001 - offline, unknown tag, hub down
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise WeightsError(f"timm weights {tag}: cannot fetch them ({type(err).__name__}: {first}); with network "
                           f"unset HF_HUB_OFFLINE, or download model.safetensors from "
                           f"{hub_page(tag)} and pass it with --from") from None


def output_path(out: str, tag: str) -> Path:
    out_path = Path(os.path.expanduser(out))
    return out_path if out_path.suffix == ".safetensors" else out_path / f"{tag}.safetensors"


def save(sd: dict, path: Path, tag: str, source: str) -> Path:
    """Write `sd` as safetensors atomically (a killed run never leaves half a file under the final name)."""
    from safetensors.torch import save_file

    from utils.io import atomic_write

    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    meta = {"format": "pt", "timm_tag": tag, "source": source}
    atomic_write(str(path), lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def prepare(backbone: str, out: str = "pretrained", source: str | None = None, log=print) -> Path:
    tag = timm_tag(backbone)
    dest = output_path(out, tag)
    if source is None:
        log(f"fetching timm weights {tag} (network or the Hugging Face cache)")
        sd = fetch_from_hub(tag)
        origin = f"timm hub {tag}"
    else:
        path = Path(os.path.expanduser(source))
        if not path.is_file():
            raise WeightsError(f"--from {path}: no such file; give the downloaded weights file")
        sd = load_weights_file(path, tag)
        origin = path.name
    missing, unexpected, wrong = compare(sd, reference_shapes(tag))
    if missing or unexpected or wrong:
        raise WeightsError(mismatch_message(source or tag, tag, missing, unexpected, wrong))
    try:
        save(sd, dest, tag, origin)
    except OSError as err:
        raise WeightsError(f"--out {dest}: cannot write it ({err.strerror or err}); choose a writable folder") from None
    log(f"wrote {dest} ({len(sd)} tensors, {sum(v.numel() for v in sd.values()) / 1e6:.1f} M values); "
        f"configs use it as  backbone_weights: {dest}")
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.prepare_weights", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", required=True,
                    help="config backbone name (TaskDiffusion_vitL, ...) or timm tag")
    ap.add_argument("--from", dest="source", default=None, metavar="FILE",
                    help="a downloaded .safetensors/.pth/.pt/.bin/.npz (offline); without it timm's hub is used")
    ap.add_argument("--out", default="pretrained", help="folder (or .safetensors file) to write (default pretrained/)")
    args = ap.parse_args(argv)
    try:
        prepare(args.backbone, args.out, args.source)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
