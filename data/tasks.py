"""The one table of tasks: what each task is, per dataset, and the canonical task order.

Every other module asks this table instead of testing task names. The canonical order fixes the
channel concatenation order and the task-gating matrices (spec intro), so it must never follow the
YAML order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Canonical order of all tasks (spec: "Task order matters").
TASK_ORDER = ("semseg", "depth", "human_parts", "sal", "normals", "edge")

# Canonical dataset names as written in configs (`train_db_name`, `val_db_name`).
DATASETS = ("PASCALContext", "NYUD")

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


@dataclass(frozen=True)
class TaskInfo:
    """What one task is on one dataset.

    kind: 'discrete' (classification per pixel, label ids) or 'continuous' (regression maps).
    num_classes: K for discrete tasks, -1 for continuous ones (the original's convention).
    num_outputs: decoder output channels (K for discrete tasks).
    ignore_value: the ground-truth value that means "no label" (255, or 0 for depth).
    embed_separately: the label embedding bypasses the shared `embed_all` fusion conv and is kept
        as its own E channels of the noisy map (the original does this for saliency only).
    metric / higher_is_better: the headline metric used for Delta_m and best-checkpoint selection.
    sample_rule: how a prediction becomes a label again before DDIM re-embeds it (spec §4.9 step 4):
        ('argmax',), ('threshold', p) (class 1 iff softmax prob > p), ('clamp', lo, hi),
        ('sigmoid',) or ('l2',) (normalise over channels).
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

    @property
    def is_discrete(self) -> bool:
        return self.kind == "discrete"


_TABLE = {
    "PASCALContext": {
        "semseg": TaskInfo("semseg", "discrete", 21, 21, 255, PASCAL_SEMSEG_CLASSES, metric="mIoU"),
        "human_parts": TaskInfo("human_parts", "discrete", 7, 7, 255, HUMAN_PARTS_CLASSES, metric="mIoU"),
        "sal": TaskInfo("sal", "discrete", 2, 2, 255, SAL_CLASSES, embed_separately=True, metric="maxF",
                        sample_rule=("threshold", 0.85)),
        "normals": TaskInfo("normals", "continuous", -1, 3, 255, metric="mean", higher_is_better=False,
                            sample_rule=("l2",)),
        "edge": TaskInfo("edge", "continuous", -1, 1, 255, metric="odsF", sample_rule=("sigmoid",)),
    },
    "NYUD": {
        "semseg": TaskInfo("semseg", "discrete", 40, 40, 255, NYUD_SEMSEG_CLASSES, metric="mIoU"),
        "depth": TaskInfo("depth", "continuous", -1, 1, 0, metric="rmse", higher_is_better=False,
                          sample_rule=("clamp", DEPTH_MIN, DEPTH_MAX)),
        "normals": TaskInfo("normals", "continuous", -1, 3, 255, metric="mean", higher_is_better=False,
                            sample_rule=("l2",)),
        "edge": TaskInfo("edge", "continuous", -1, 1, 255, metric="odsF", sample_rule=("sigmoid",)),
    },
}

# Network input size (= crop size) per dataset, (H, W) (spec §2: TRAIN.SCALE = TEST.SCALE).
DEFAULT_SCALE = {"PASCALContext": (512, 512), "NYUD": (448, 576)}
# Edge positive weight per dataset (spec §6), used when the config does not set edge_w.
DEFAULT_EDGE_W = {"PASCALContext": 0.95, "NYUD": 0.90}
# Boundary matching tolerance relative to the image diagonal (spec §7.3).
EDGE_MAX_DIST = {"PASCALContext": 0.0075, "NYUD": 0.011}


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
