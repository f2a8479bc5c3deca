"""utils/visualization.py: VOC palette, task pictures per sample rule, grids and PNG writers."""
import numpy as np
import pytest
import torch
from PIL import Image

from data.tasks import task_info
from utils import visualization as vis


def test_voc_palette_known_colours():
    pal = vis.voc_palette(256)
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    # VOC: background black, aeroplane (128,0,0), person (192,128,128), void 255 (224,224,192)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]
    assert pal[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in pal[:40]}) == 40  # NYUD's 40 classes all distinct


def test_prediction_maps_follow_sample_rules():
    sem = task_info("PASCALContext", "semseg")
    logits = torch.zeros(21, 2, 3)
    logits[7, 0, 1] = 5.0
    lab = vis.prediction_to_numpy(sem, logits)
    assert lab.shape == (2, 3) and lab[0, 1] == 7 and lab[1, 2] == 0
    sal = task_info("PASCALContext", "sal")
    p = vis.prediction_to_numpy(sal, torch.tensor([[[0.0]], [[np.log(3.0)]]]))
    assert p[0, 0] == pytest.approx(0.75)
    edge = task_info("PASCALContext", "edge")
    assert vis.prediction_to_numpy(edge, torch.zeros(1, 2, 2))[0, 0] == pytest.approx(0.5)
    nrm = task_info("PASCALContext", "normals")
    n = vis.prediction_to_numpy(nrm, torch.tensor([3.0, 0.0, 4.0]).view(3, 1, 1))
    assert n.shape == (1, 1, 3) and n[0, 0].tolist() == pytest.approx([0.6, 0.0, 0.8])
    depth = task_info("NYUD", "depth")
    d = vis.prediction_to_numpy(depth, torch.tensor([-1.0, 2.0, 100.0]).view(1, 1, 3))
    assert d.tolist() == [[0.0, 2.0, 80.0]]


def test_pictures_are_rgb_uint8():
    rgb = vis.colorize_labels(np.array([[0, 1], [15, 255]]))
    assert rgb.shape == (2, 2, 3) and rgb[0, 1].tolist() == [128, 0, 0] and rgb[1, 1].tolist() == [224, 224, 192]
    n = vis.normals_to_rgb(np.array([[[-1.0, 0.0, 1.0]]]))
    assert n[0, 0].tolist() == [0, 128, 255]
    d = vis.depth_to_color(np.array([[0.0, 1.0, 3.0]]))
    assert d[0, 0].tolist() == [0, 0, 0] and d[0, 1].tolist() != d[0, 2].tolist()
    g = vis.gray_to_rgb(np.array([[0.0, 1.0]]), valid=np.array([[True, False]]))
    assert g[0, 0].tolist() == [0, 0, 0] and g[0, 1].tolist() == [96, 0, 0]
    img = vis.denormalize_image(torch.zeros(3, 2, 2))
    assert img[0, 0].tolist() == [124, 116, 104]  # the ImageNet mean colour


def test_grid_pads_cells():
    a = np.zeros((4, 6, 3), np.uint8)
    b = np.full((2, 3, 3), 7, np.uint8)
    grid = vis.make_grid([[a, b], [b]], pad=1)
    assert grid.shape == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1, 3)
    assert grid[1, 8].tolist() == [7, 7, 7] and grid[6, 1].tolist() == [7, 7, 7]
    cap = vis.add_caption(a, "semseg pred")
    assert cap.shape[1] == 6 and cap.shape[0] > 4


def test_png_writers(tmp_path):
    lab = np.array([[0, 1, 2], [15, 40, 255]], dtype=np.int64)
    p = vis.save_label_png(str(tmp_path / "semseg" / "a.png"), lab)
    im = Image.open(p)
    assert im.mode == "P" and np.array(im).tolist() == lab.tolist()
    assert im.getpalette()[3:6] == [128, 0, 0]
    depth = np.array([[0.0, 1.2344, 10.0]])
    p = vis.save_depth_png16(str(tmp_path / "depth.png"), depth)
    import cv2

    mm = cv2.imread(p, cv2.IMREAD_UNCHANGED)
    assert mm.dtype == np.uint16 and mm.tolist() == [[0, 1234, 10000]]
    p = vis.save_png(str(tmp_path / "rgb.png"), np.full((2, 2, 3), 9, np.uint8))
    assert np.array(Image.open(p)).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="uint8"):
        vis.save_png(str(tmp_path / "f.png"), np.zeros((2, 2), np.float32))
    assert not list(tmp_path.rglob(".tmp_*"))


def test_uncertainty_pictures_colour_bars_and_legends(tmp_path):
    import numpy as np

    from data.tasks import task_info
    from utils import visualization as vis

    semseg = task_info("PASCALContext", "semseg")
    u = np.linspace(0, np.log(21), 40 * 30, dtype=np.float32).reshape(40, 30)
    pic = semseg.uncertainty_picture("entropy", u)
    assert pic.shape[1] == 30 and pic.shape[0] > 40 and pic.dtype == np.uint8
    assert pic[0, 0].sum() < pic[39, 29].sum()  # dark = certain, bright = uncertain
    bar = vis.colorbar(120, 0.0, 3.04, "nats")
    assert bar.shape[1] == 120 and (bar[:8, 0].sum() < bar[:8, -1].sum())
    legend = vis.class_legend(np.array([[0, 15], [15, 255]]), semseg.class_names, 200)
    assert legend is not None and legend.shape[1] == 200
    assert vis.class_legend(np.full((2, 2), 255), semseg.class_names, 50) is None  # nothing labelled
    paths = semseg.write_uncertainty(str(tmp_path), "img", {"entropy": u, "mutual_info": u / 2})
    arr = np.load(tmp_path / "semseg_mutual_info" / "img.npy")
    assert arr.dtype == np.float32 and np.array_equal(arr, u / 2) and len(paths) == 4
