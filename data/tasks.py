"""Tasks as objects: what each task is, per dataset, and the canonical task order.

A `Task` carries everything task-specific (labels, sample rule, loss, meter, post-processing, writer,
pictures); every other module loops over the configured task objects and asks them, never testing a
task's name. Adding a task = one `register_task(Task(...), datasets)` + the reader's label loading
(`MultiTaskDataset.register_label`) + `include_<task>: true` and its loss weight in the config; see
docs/extending.md. The canonical order fixes the channel concatenation order and the task-gating
matrices, so it never follows the YAML order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

PASCAL_SEMSEG_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
NYUD_SEMSEG_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)
HUMAN_PARTS_CLASSES = ("background", "head", "torso", "uarm", "larm", "uleg", "lleg")
SAL_CLASSES = ("background", "salient")
DEPTH_MIN, DEPTH_MAX = 0.0, 80.0

# Ensembles (docs/method.md#sample-ensembles), by sample rule: the aggregation rules a task of that rule
# accepts (the first is its default) and the uncertainty maps it gets, (name, unit), the first being the
# one the pictures show first and the evaluation scores. The maths is in evaluation/ensemble.py.
ENSEMBLE_RULES = {
    "argmax": ("mean_prob", "vote"),
    "threshold": ("mean_prob", "vote"),
    "sigmoid": ("mean_prob",),
    "clamp": ("mean", "median"),
    "identity": ("mean", "median"),
    "l2": ("mean_direction",),
}
UNCERTAINTY_MAPS = {
    "argmax": (("entropy", "nats"), ("mutual_info", "nats")),
    "threshold": (("entropy", "nats"), ("mutual_info", "nats")),
    "sigmoid": (("entropy", "nats"),),
    "clamp": (("std", "value units (metres for depth)"),),
    "identity": (("std", "value units"),),
    "l2": (("angular_dev", "degrees"),),
}


def resolve(ref):
    """A component given as a callable, or as a "package.module:attr.attr" reference, imported on use.

    Why references: a task names its loss (losses/), its meter (evaluation/) and such by reference, so
    this low-level table does not import the packages above it; each of those packages resolves the
    references it needs, in its own layer. A task defined elsewhere (a test, a user's plug-in) may pass
    the callables themselves."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    obj = import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Task:
    """Everything task-specific, in one object: what the labels are, how predictions become labels
    again, the loss, the metric meter, the post-processing, the prediction writer and the pictures.

    Labels:
      kind: 'discrete' (classification per pixel, label ids) or 'continuous' (regression maps).
      num_classes: K for discrete tasks, -1 for continuous ones (the original's convention).
      num_outputs: decoder output channels (K for discrete tasks).
      ignore_value: the ground-truth value that means "no label" (255, or 0 for depth).
      class_names: names of the classes (discrete tasks), for per-class metrics.
    Model:
      embed_separately: the label embedding bypasses the shared `embed_all` fusion conv and is kept
        as its own E channels of the noisy map (the original does this for saliency only).
      sample_rule: how a prediction becomes a label again before DDIM re-embeds it; also how it is
        shown and written: ('argmax',), ('threshold', p) (class 1 iff softmax prob > p),
        ('clamp', lo, hi), ('sigmoid',) or ('l2',) (normalise over channels); see docs/method.md.
    Data pipeline (data/transforms.py):
      pad_value: value of padded pixels (None: ignore_value); scale_divided: values shrink when the
      image is enlarged (metric depth); flip_negate_x: channel 0 is an x component, negated on
      horizontal flips (normals); invalid_rule: 'zero_vector' (all-zero vectors become ignore_value)
      or 'all_background' (a map with no foreground label becomes all ignore_value), or None;
      balances_crop: the random crop is redrawn while one of this task's classes dominates (semseg).
    Training and evaluation (references resolved by the layer that uses them, see `resolve`):
      loss: fn(pred B×K×H×W, gt B×C×H×W, **kwargs) -> scalar; it receives `ignore_index` when it
        takes one, plus the config values named in loss_config ((kwarg, config key) pairs).
      meter: factory(task, ctx) -> accumulator with update/merge/synchronize/compute (evaluation/);
        ctx is evaluation.multitask.EvalContext.
      postprocess: fn(raw B×K×H×W) -> the meter's input (labels, scores).
      metric / higher_is_better: the headline metric for Delta_m and best-checkpoint selection.
    Output (methods, overridable by subclasses): to_numpy, target_to_numpy, picture, write.
    Ensembles (eval_samples N > 1, docs/method.md#sample-ensembles):
      aggregation: how the N draws become one prediction: a rule name of `aggregation_rules` (None: the
        first, the default of the task's sample rule) or a callable / "module:attr" reference
        fn(draws N×B×K×H×W) -> B×K×H×W raw output; the config's eval_aggregation overrides it per task.
      uncertainty: the per-pixel uncertainty maps, (name, unit) pairs (None: those of the sample rule,
        UNCERTAINTY_MAPS); a task with another sample rule declares its own and a callable
        `uncertainty_fn` fn(draws) -> {name: B×H×W}.
    """

    name: str
    kind: str
    num_classes: int
    num_outputs: int
    ignore_value: float
    class_names: tuple = field(default=())
    embed_separately: bool = False
    metric: str = ""
    higher_is_better: bool = True
    sample_rule: tuple = ("argmax",)
    pad_value: float | None = None
    scale_divided: bool = False
    flip_negate_x: bool = False
    invalid_rule: str | None = None
    balances_crop: bool = False
    loss: Any = "losses.task_losses:masked_cross_entropy"
    loss_config: tuple = ()
    meter: Any = "evaluation.segmentation:SegmentationMeter.for_task"
    postprocess: Any = "evaluation.postprocess:segmentation_labels"
    aggregation: Any = None
    uncertainty: tuple | None = None
    uncertainty_fn: Any = None

    @property
    def is_discrete(self) -> bool:
        return self.kind == "discrete"

    # ---- ensembles: aggregation and uncertainty, declared by the sample rule (evaluation/ensemble.py) ----
    @property
    def aggregation_rules(self) -> tuple:
        """The rule names this task accepts for aggregating N draws (the first is the default)."""
        return ENSEMBLE_RULES.get(self.sample_rule[0], ())

    def aggregation_for(self, override=None):
        """The aggregation to use: `override` (the config's eval_aggregation entry), else the declared one,
        else the sample rule's default; a rule name is checked against aggregation_rules."""
        rule = override if override is not None else self.aggregation
        if rule is None:
            if not self.aggregation_rules:
                raise ValueError(f"task {self.name}: no default ensemble aggregation for sample rule "
                                 f"{self.sample_rule!r}; declare Task(aggregation=fn) (fn(draws N×B×K×H×W) -> "
                                 f"B×K×H×W)")
            return self.aggregation_rules[0]
        if isinstance(rule, str) and ":" not in rule and rule not in self.aggregation_rules:
            raise ValueError(f"task {self.name}: unknown ensemble aggregation {rule!r}; it accepts "
                             f"{', '.join(self.aggregation_rules) or 'a callable only'}")
        return rule

    @property
    def uncertainty_maps(self) -> tuple:
        """(name, unit) of each per-pixel uncertainty map of an ensemble; the first is the headline one."""
        if self.uncertainty is not None:
            return tuple(tuple(u) for u in self.uncertainty)
        return UNCERTAINTY_MAPS.get(self.sample_rule[0], ())

    @property
    def padding(self) -> float:
        return float(self.ignore_value if self.pad_value is None else self.pad_value)

    # ---- output: arrays, pictures, files (default behaviour follows the sample rule) ----------------
    def to_numpy(self, logits):
        """Raw output K×H×W of one image -> the task's map: labels (H×W int), probabilities or values."""
        from utils.visualization import prediction_to_numpy

        return prediction_to_numpy(self, logits)

    def target_to_numpy(self, target):
        """Ground truth C×H×W of one image -> (map like to_numpy's, valid mask H×W bool)."""
        from utils.visualization import target_to_numpy

        return target_to_numpy(self, target)

    def picture(self, value, valid=None, **kw):
        """A map of to_numpy / target_to_numpy -> H×W×3 uint8 picture (palette, colormap, grey)."""
        from utils.visualization import task_picture

        return task_picture(self, value, valid, **kw)

    def write(self, folder: str, name: str, value) -> list:
        """Write one image's prediction (a to_numpy map at the original size) under folder/<task>/;
        returns the paths. Labels: indexed PNG with the VOC palette (pixel = class id); probabilities
        and edges: 8-bit grey; depth: 16-bit PNG in millimetres plus a colormap; normals: RGB PNG."""
        import os

        import numpy as np

        from utils import visualization as vis

        path = os.path.join(folder, self.name, f"{name}.png")
        rule = self.sample_rule[0]
        if rule == "argmax":
            return [vis.save_label_png(path, value)]
        if rule in ("threshold", "sigmoid"):
            return [vis.save_png(path, np.clip(value * 255.0, 0, 255).astype(np.uint8))]
        if rule == "clamp":
            color = os.path.join(folder, f"{self.name}_color", f"{name}.png")
            return [vis.save_depth_png16(path, value), vis.save_png(color, vis.depth_to_color(value))]
        if rule == "l2":
            return [vis.save_png(path, vis.normals_to_rgb(value))]
        raise ValueError(f"task {self.name}: no writer for sample rule {self.sample_rule!r}; override Task.write")

    def uncertainty_bound(self, map_name: str) -> float | None:
        """The colour-scale maximum of an uncertainty map: ln K for the predictive entropy (ln 2 for sigmoid
        tasks), a fixed scale comparable across images; None (each picture's own maximum) for the others,
        whose values sit far below their theoretical bounds."""
        if map_name != "entropy":
            return None
        import math

        return math.log(2.0) if self.sample_rule[0] == "sigmoid" else math.log(max(2, int(self.num_outputs)))

    def uncertainty_picture(self, map_name: str, values, with_bar: bool = True):
        """An H×W uncertainty map -> RGB picture (inferno: dark certain, bright uncertain), with a colour bar
        giving its range and unit underneath when with_bar."""
        from utils import visualization as vis

        lo, hi = vis.uncertainty_range(values, self.uncertainty_bound(map_name))
        pic = vis.uncertainty_to_color(values, lo, hi)
        unit = dict(self.uncertainty_maps).get(map_name, "")
        return vis.with_colorbar(pic, lo, hi, unit.split(" ")[0]) if with_bar else pic

    def write_uncertainty(self, folder: str, name: str, maps: dict) -> list:
        """Write one image's uncertainty maps ({map name: H×W float at the original size}) under
        folder/<task>_<map>/: <name>.npy (float32 H×W, the values in the map's unit, Task.uncertainty_maps)
        and <name>.png (colour-mapped, a colour bar with the range and unit underneath); returns the paths."""
        import os

        from utils import visualization as vis

        paths = []
        for key, values in maps.items():
            sub = os.path.join(folder, f"{self.name}_{key}")
            paths.append(vis.save_float_array(os.path.join(sub, f"{name}.npy"), values))
            paths.append(vis.save_png(os.path.join(sub, f"{name}.png"), self.uncertainty_picture(key, values)))
        return paths

    def uncertainty_folders(self) -> list:
        """The folders `write_uncertainty` fills (ensembles only)."""
        return [f"{self.name}_{key}" for key, _ in self.uncertainty_maps]

    def output_folders(self) -> list:
        """The folders `write` fills under the output folder."""
        return [self.name] + ([f"{self.name}_color"] if self.sample_rule[0] == "clamp" else [])

    # ---- input: which label values are allowed ----------------------------------------------------------
    def check_label(self, label) -> str | None:
        """What is wrong with one sample's label array as read (H×W or H×W×C), or None when every value is
        allowed: finite (no NaN/Inf: a NaN depth pixel would make the loss NaN at once) and, for discrete
        tasks, a class id 0..num_classes-1 or the ignore value. Called by the generic sample reader
        (data/base.py) for every dataset, so a bad value is reported like an unreadable file, with the file
        and sample named, instead of as a non-finite loss; a subclass may add its own rules."""
        import numpy as np

        a = np.asarray(label)
        if a.dtype.kind == "f":
            bad = ~np.isfinite(a)
            if bad.any():
                kinds = [k for k, m in (("NaN", np.isnan(a)), ("+Inf", np.isposinf(a)), ("-Inf", np.isneginf(a)))
                         if m.any()]
                return f"{int(bad.sum())} non-finite value(s) ({', '.join(kinds)})"
        if self.is_discrete and self.num_classes > 0:
            ok = (a == self.ignore_value) | ((a >= 0) & (a < self.num_classes) & (a == np.floor(a)))
            if not ok.all():
                values = np.unique(a[~ok])
                shown = ", ".join(f"{v:g}" for v in values[:5].tolist()) + (", ..." if len(values) > 5 else "")
                return (f"{int((~ok).sum())} pixel(s) with value(s) {shown} outside its class ids "
                        f"0..{self.num_classes - 1} and the ignore value {self.ignore_value:g}")
        return None


TaskInfo = Task  # the earlier name, kept for code and checkpoints' users that import it


def _seg(name, classes, **kw) -> Task:
    return Task(name, "discrete", len(classes), len(classes), 255, tuple(classes), metric="mIoU", **kw)


_EDGE = dict(metric="odsF", sample_rule=("sigmoid",), loss="losses.task_losses:balanced_edge_bce",
             loss_config=(("edge_w", "edge_w"),), meter="evaluation.edge_proxy:EdgeMeter.for_task",
             postprocess="evaluation.postprocess:edge_scores")
_NORMALS = dict(metric="mean", higher_is_better=False, sample_rule=("l2",), pad_value=0.0, flip_negate_x=True,
                invalid_rule="zero_vector", loss="losses.task_losses:normalized_l1",
                meter="evaluation.normals:NormalsMeter.for_task", postprocess="evaluation.postprocess:normals_scores")

# Registered tasks per dataset, and the canonical order of all task names. The canonical order fixes
# the channel concatenation order and the task-gating matrices, so it never follows the YAML order;
# tasks registered later come after the built-in ones, in registration order.
_TABLE: dict = {}
TASK_ORDER: list = []
DATASETS: list = []


def register_task(task: Task, datasets, replace: bool = False) -> Task:
    """Make `task` available on each dataset named in `datasets` (a name or a list of names).

    A new task name is appended to the canonical order. Registering an existing (dataset, name) again
    raises unless replace=True (two definitions of one task would silently change a model)."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task expects a data.tasks.Task, got {type(task).__name__}")
    for db in [datasets] if isinstance(datasets, str) else list(datasets):
        table = _TABLE.setdefault(db, {})
        if task.name in table and not replace and table[task.name] is not task:
            raise ValueError(f"task {task.name!r} is already registered on {db}; pass replace=True to redefine it")
        table[task.name] = task
        if db not in DATASETS:
            DATASETS.append(db)
    if task.name not in TASK_ORDER:
        TASK_ORDER.append(task.name)
    return task


def declared_tasks(attr: str, value=True) -> tuple:
    """Names of the registered tasks (on any dataset) whose `attr` equals `value`, in canonical order:
    the defaults of transforms built without an explicit task list."""
    found = {t.name for table in _TABLE.values() for t in table.values() if getattr(t, attr) == value}
    return tuple(n for n in TASK_ORDER if n in found)


def unregister_task(name: str, datasets) -> None:
    """Remove a task from datasets (tests and plug-ins that register temporarily)."""
    for db in [datasets] if isinstance(datasets, str) else list(datasets):
        _TABLE.get(db, {}).pop(name, None)
    if not any(name in t for t in _TABLE.values()) and name in TASK_ORDER:
        TASK_ORDER.remove(name)


for _db, _classes in (("PASCALContext", PASCAL_SEMSEG_CLASSES), ("NYUD", NYUD_SEMSEG_CLASSES)):
    register_task(_seg("semseg", _classes, balances_crop=True), _db)
register_task(Task("depth", "continuous", -1, 1, 0, metric="rmse", higher_is_better=False,
                   sample_rule=("clamp", DEPTH_MIN, DEPTH_MAX), scale_divided=True,
                   loss="losses.task_losses:masked_l1", loss_config=(("ignore_invalid", "ignore_invalid_area_depth"),),
                   meter="evaluation.depth:DepthMeter.for_task", postprocess="evaluation.postprocess:depth_values"),
              "NYUD")
register_task(_seg("human_parts", HUMAN_PARTS_CLASSES, invalid_rule="all_background"), "PASCALContext")
register_task(Task("sal", "discrete", 2, 2, 255, SAL_CLASSES, embed_separately=True, metric="maxF",
                   sample_rule=("threshold", 0.85), loss="losses.task_losses:balanced_saliency_ce",
                   meter="evaluation.saliency:SaliencyMeter.for_task",
                   postprocess="evaluation.postprocess:saliency_scores"), "PASCALContext")
register_task(Task("normals", "continuous", -1, 3, 255, **_NORMALS), ("PASCALContext", "NYUD"))
register_task(Task("edge", "continuous", -1, 1, 255, **_EDGE), ("PASCALContext", "NYUD"))

# Dataset facts live in the dataset registry (data/registry.py: dataset_spec(name).crop_size, .edge_w,
# .edge_max_dist); these live read-only views keep older imports working. The registry imports nothing
# from this module, so there is no cycle.
from .registry import spec_view as _spec_view  # noqa: E402

DEFAULT_SCALE = _spec_view("crop_size")
DEFAULT_EDGE_W = _spec_view("edge_w")
EDGE_MAX_DIST = _spec_view("edge_max_dist")


def check_dataset(db_name: str) -> str:
    if db_name not in _TABLE:
        raise ValueError(f"unknown dataset {db_name!r}; known datasets: {', '.join(DATASETS)}")
    return db_name


def available_tasks(db_name: str) -> tuple:
    """Tasks the dataset provides, in canonical order."""
    check_dataset(db_name)
    return tuple(t for t in TASK_ORDER if t in _TABLE[db_name])


def task_info(db_name: str, task: str) -> TaskInfo:
    check_dataset(db_name)
    if task not in _TABLE[db_name]:
        raise ValueError(
            f"task {task!r} is not available on {db_name}; it has: {', '.join(available_tasks(db_name))}"
        )
    return _TABLE[db_name][task]


def ordered_tasks(db_name: str, names) -> list:
    """The given task names in canonical order; unknown or unavailable names raise ValueError."""
    names = list(names)
    for n in names:
        if n not in TASK_ORDER:
            raise ValueError(f"unknown task {n!r}; known tasks: {', '.join(TASK_ORDER)}")
        task_info(db_name, n)
    return [t for t in TASK_ORDER if t in names]


def task_infos(db_name: str, names) -> dict:
    """{task: TaskInfo} for the given tasks, in canonical order."""
    return {t: task_info(db_name, t) for t in ordered_tasks(db_name, names)}
