"""Links into the docs resolve: `docs/<page>.md#<anchor>` in code comments and links between the pages.

Anchors are GitHub's heading anchors (lower-cased heading text, punctuation removed, spaces to hyphens,
`-1`, `-2` for repeats) and explicit `<a id="...">` tags. Links to a page that does not exist (yet) are
not checked here; links to an existing page must name an existing anchor.
"""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SKIP_DIRS = {".git", ".venv", "__pycache__", "runs", "outputs", "data_root", "pretrained", "node_modules"}
TEXT_SUFFIXES = {".py", ".sh", ".yml", ".yaml", ".md", ".txt", ".cfg", ".ini", ".toml"}
CODE_REF = re.compile(r"docs/([A-Za-z0-9_\-]+\.md)#([A-Za-z0-9_\-.]+)")
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")

# Sections that code comments point to: renaming one breaks those links (see docs/README.md).
STABLE_ANCHORS = {
    "method.md": [
        "task-order", "datasets-and-labels", "sample-dict-and-batches", "pascal-context-labels",
        "pascal-context-boundaries", "human-parts", "pascal-context-surface-normals", "nyud-v2-labels",
        "tasks-classes-and-outputs", "data-pipeline", "training-transforms", "random-scaling", "random-crop",
        "horizontal-flip", "photometric-distortion", "normalisation", "centred-padding", "ignore-regions",
        "validation-transforms", "augmentation-randomness", "backbone", "backbone-variants",
        "multi-level-features", "initialisation-and-pretrained-weights", "joint-denoising-decoder",
        "decoder-sizes", "time-conditioned-blocks", "module-inventory", "label-embedding-and-bit-encoding",
        "noise-schedule", "time-embedding", "decoder-core", "training-forward", "ddim-sampling",
        "model-wrapper", "parameter-counts", "fast-decoder-path", "mlore-variant", "low-rank-experts", "router",
        "moe-block", "mlore-decoder-changes", "mlore-auxiliary-head", "losses", "per-task-losses",
        "multi-task-objective", "load-balancing-loss", "evaluation", "post-processing", "metrics",
        "boundary-metric", "edge-prediction-pngs", "multi-task-delta", "training-recipe",
        "optimiser-and-schedule", "batch-and-distributed-training", "iterations-and-checkpoints",
        "quirks-kept-on-purpose", "small-label-bits", "irregular-ddim-time-pairs", "returned-depth-is-clamped",
        "saliency-embedding-kept-separate", "deviations-from-the-original", "iteration-counting",
        "per-rank-seeds", "evaluation-on-every-rank", "seeded-sampling-noise", "in-process-boundary-metric",
        "no-in-place-changes", "training-loop-changes", "dataset-caches", "decoder-pseudo-code", "notation",
        "continuous-labels-downsampled-with-their-ignore-values", "sampling-fixes", "any-input-size",
        "process-setup", "configuration-changes", "checkpoints-and-outputs",
    ],
    "reproducing.md": ["paper-results", "what-you-need", "training-commands", "evaluating-a-checkpoint",
                       "boundary-numbers-with-the-matlab-tool", "cost"],
    "configs.md": ["configuration-keys", "derived-keys", "max_iter", "edge_eval.workers"],
}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    found, seen, fence = set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
            continue
        found.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', line))
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m and not fence:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


_CACHE = {}


def page_anchors(path: Path) -> set:
    key = path.resolve()
    if key not in _CACHE:
        _CACHE[key] = anchors(key)
    return _CACHE[key]


def text_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if p.suffix in TEXT_SUFFIXES:
                yield p


def _resolves(page: Path, anchor: str) -> bool:
    names = page_anchors(page)
    return anchor in names or anchor.rstrip(".,;:)") in names


def test_slug_rules():
    assert slug("Noise schedule") == "noise-schedule"
    assert slug("Label embedding and bit encoding") == "label-embedding-and-bit-encoding"
    assert slug("SLURM: `scripts/slurm_train.sh`") == "slurm-scriptsslurm_trainsh"
    assert slug("Restarts after a failure (`--max-restarts`)") == "restarts-after-a-failure---max-restarts"


def test_code_references_to_docs_resolve():
    broken = []
    for path in text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for page, anchor in CODE_REF.findall(line):
                target = DOCS / page
                if target.is_file() and not _resolves(target, anchor):
                    broken.append(f"{path.relative_to(ROOT)}:{lineno}: docs/{page}#{anchor}")
    assert not broken, "links to missing sections of the docs:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")) + ["../README.md", "../BENCHMARKS.md"])
def test_markdown_links_resolve(page):
    path = (DOCS / page).resolve()
    if not path.is_file():
        pytest.skip(f"{page} does not exist")
    broken, fence = [], False
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
            continue
        if fence:
            continue
        for target in MD_LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.\-]*:", target):  # http:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not anchor or dest.suffix != ".md" or not dest.is_file():
                continue
            if not _resolves(dest, anchor):
                broken.append(f"{page}:{lineno}: {target}")
    assert not broken, "links to missing anchors:\n" + "\n".join(broken)


def test_stable_anchors_exist():
    missing = [f"docs/{page}#{a}" for page, names in STABLE_ANCHORS.items() for a in names
               if not _resolves(DOCS / page, a)]
    assert not missing, ("sections that code comments may point to are gone (rename them back, or update "
                         "the comments and this list):\n" + "\n".join(missing))
