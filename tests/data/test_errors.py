"""Bad input fails with a message that names the path, the sample and what to do."""
import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from data import DatasetError, build_dataloader, build_dataset
from data.nyud import NYUD
from data.pascal_context import PASCALContext
from data.datasets.pascal_context import _anno_struct


def test_missing_pascal_folder_explains_everything(tmp_path, cfg_factory):
    cfg = cfg_factory("PASCALContext", tmp_path / "nowhere")
    with pytest.raises(DatasetError) as err:
        build_dataset(cfg, "train")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "PASCALContext") in msg
    for part in ("ImageSets/Context", "JPEGImages/<id>.jpg", "human_parts/<id>.mat", "normals_distill",
                 "PASCALContext.tar.gz", "ATRC", "--data_root", "TASKDIFFUSION_DATA", "db_root",
                 "python -m data.synthetic --dataset pascal"):
        assert part in msg, part


def test_missing_nyud_folder_and_unset_root(tmp_path, cfg_factory):
    with pytest.raises(DatasetError) as err:
        NYUD(tmp_path, "train")
    msg = str(err.value)
    for part in (str(tmp_path / "NYUDv2"), "gt_sets/{train,val}.txt", "depth/<id>.npy", "NYUDv2.tar.gz",
                 "--data_root", "TASKDIFFUSION_DATA", "db_root"):
        assert part in msg, part
    cfg = cfg_factory("NYUD", tmp_path)
    cfg.db_root = None
    with pytest.raises(DatasetError, match="no data root set"):
        build_dataset(cfg, "train")


def test_dataset_folder_itself_is_accepted_as_root(fresh_root):
    assert len(NYUD(fresh_root / "NYUDv2", "train")) == 2


def test_missing_file_names_file_and_sample(fresh_root, tmp_path):
    p = fresh_root / "PASCALContext" / "normals_distill" / "2008_000001.png"
    p.unlink()
    with pytest.raises(DatasetError) as err:
        PASCALContext(fresh_root, "train", cache_dir=tmp_path)
    assert str(p) in str(err.value) and "'2008_000001'" in str(err.value)
    # without the normals task the file is not needed
    assert len(PASCALContext(fresh_root, "train", tasks=["semseg"], cache_dir=tmp_path)) == 2


def test_nyud_checks_all_five_modalities(fresh_root):
    p = fresh_root / "NYUDv2" / "depth" / "0002.npy"
    p.unlink()
    with pytest.raises(DatasetError) as err:
        NYUD(fresh_root, "train", tasks=["semseg"])
    assert str(p) in str(err.value) and "'0002'" in str(err.value)


def test_missing_semseg_in_both_folders(fresh_root, tmp_path):
    root = fresh_root / "PASCALContext"
    for folder in ("VOC12", "pascal-context"):
        for f in (root / "semseg" / folder).glob("2008_000000.png"):
            f.unlink()
    with pytest.raises(DatasetError) as err:
        PASCALContext(fresh_root, "train", tasks=["semseg"], cache_dir=tmp_path)
    msg = str(err.value)
    assert "semseg/VOC12/2008_000000.png" in msg and "semseg/pascal-context/2008_000000.png" in msg


@pytest.mark.parametrize("task,path", [
    ("image", "JPEGImages/2008_000001.jpg"),
    ("edge", "pascal-context/trainval/2008_000001.mat"),
    ("human_parts", "human_parts/2008_000001.mat"),
    ("sal", "sal_distill/2008_000001.png"),
])
def test_corrupt_pascal_file_names_file_and_sample(fresh_root, tmp_path, task, path):
    p = fresh_root / "PASCALContext" / path
    p.write_bytes(b"this is not a valid file")
    tasks = ["semseg"] if task == "image" else [task]
    with pytest.raises(DatasetError) as err:
        ds = PASCALContext(fresh_root, "train", tasks=tasks, cache_dir=tmp_path)
        ds[1]
    assert str(p) in str(err.value) and "2008_000001" in str(err.value)


def test_corrupt_nyud_depth(fresh_root):
    p = fresh_root / "NYUDv2" / "depth" / "0001.npy"
    p.write_bytes(b"garbage")
    ds = NYUD(fresh_root, "train", tasks=["depth"])
    with pytest.raises(DatasetError) as err:
        ds[0]
    assert str(p) in str(err.value) and "'0001'" in str(err.value)


def test_wrong_mat_variable_and_unknown_part(fresh_root, tmp_path):
    lm = fresh_root / "PASCALContext" / "pascal-context" / "trainval" / "2008_000000.mat"
    sio.savemat(lm, {"Labels": np.zeros((4, 4), np.uint16)})
    ds = PASCALContext(fresh_root, "train", tasks=["edge"], cache_dir=tmp_path)
    with pytest.raises(DatasetError, match="no variable 'LabelMap'"):
        ds[0]
    hp = fresh_root / "PASCALContext" / "human_parts" / "2008_000000.mat"
    m = np.ones((128, 128), np.uint8)
    sio.savemat(hp, {"anno": _anno_struct("x", [{"class": "person", "class_ind": 15, "mask": m,
                                                  "parts": [("tail", m)]}])})
    ds = PASCALContext(fresh_root, "train", tasks=["human_parts"], cache_dir=tmp_path / "2")
    with pytest.raises(DatasetError, match="unknown person part name 'tail'"):
        ds[0]


def test_empty_and_unknown_split(fresh_root, tmp_path):
    split = fresh_root / "PASCALContext" / "ImageSets" / "Context" / "val.txt"
    split.write_text("\n\n")
    with pytest.raises(DatasetError, match="empty") as err:
        PASCALContext(fresh_root, "val", cache_dir=tmp_path)
    assert str(split) in str(err.value)
    with pytest.raises(DatasetError, match="available splits: train, val"):
        NYUD(fresh_root, "test")


def test_task_the_dataset_lacks(fresh_root, cfg_factory, tmp_path):
    with pytest.raises(DatasetError, match="NYUD has no task.*'sal'.*provides: semseg, depth, normals, edge"):
        NYUD(fresh_root, "train", tasks=["semseg", "sal"])
    cfg = cfg_factory("PASCALContext", fresh_root, tasks=["semseg", "depth"])
    with pytest.raises(DatasetError, match="'depth'.*PASCALContext provides"):
        build_dataset(cfg, "train")
    with pytest.raises(DatasetError, match="unknown dataset"):
        build_dataset(cfg_factory("KITTI", fresh_root, tasks=["semseg"]), "train")


def test_mismatched_label_size(fresh_root, tmp_path):
    # image 2008_000001 is 128x120 (H x W); a transposed label cannot be resized sensibly
    p = fresh_root / "PASCALContext" / "sal_distill" / "2008_000001.png"
    Image.fromarray(np.zeros((120, 128), np.uint8)).save(p)
    ds = PASCALContext(fresh_root, "train", tasks=["sal"], cache_dir=tmp_path)
    with pytest.raises(DatasetError) as err:
        ds[1]
    msg = str(err.value)
    assert str(p) in msg and "120x128" in msg and "128x120" in msg
    # a half-size copy is resized (nearest) with a warning
    Image.fromarray(np.full((64, 60), 255, np.uint8)).save(p)
    with pytest.warns(UserWarning, match="resizing"):
        s = ds[1]
    assert s["sal"].shape == (128, 120, 1) and np.all(s["sal"] == 1)


def test_batch_larger_than_split(fresh_root, cfg_factory, cache_dir):
    cfg = cfg_factory("NYUD", fresh_root, trBatch=4)
    with pytest.raises(DatasetError, match="lower the batch size"):
        build_dataloader(cfg, "train")
