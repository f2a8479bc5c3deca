"""Resume from the newest checkpoint that loads: a damaged last.pth is set aside (never deleted), the newest
readable periodic copy is the resume point, best.pth never is; no readable checkpoint is one error naming
every candidate."""
import os

import pytest
import torch

from utils.checkpoint import (CheckpointError, build_state, choose_resume_checkpoint, resume_candidates,
                              save_checkpoint)


def _run_folder(tmp_path, iterations=(2, 4, 6)):
    model = torch.nn.Linear(2, 2)
    for it in iterations:
        save_checkpoint(build_state(model, iteration=it), str(tmp_path), periodic=True)
    return tmp_path / "checkpoints"


def _truncate(path, keep=100):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_candidates_are_last_then_periodic_newest_first_and_never_best(tmp_path):
    folder = _run_folder(tmp_path, (2, 10, 4))
    save_checkpoint(build_state(torch.nn.Linear(2, 2), iteration=10), str(tmp_path), is_best=True)
    names = [os.path.basename(p) for p in resume_candidates(str(tmp_path))]
    assert names == ["last.pth", "iter_000010.pth", "iter_000004.pth", "iter_000002.pth"]
    assert (folder / "best.pth").is_file()


def test_intact_last_is_chosen_without_notes(tmp_path):
    _run_folder(tmp_path)
    path, ck, notes = choose_resume_checkpoint(str(tmp_path))
    assert os.path.basename(path) == "last.pth" and ck["iteration"] == 6 and notes == []


def test_truncated_last_falls_back_to_newest_readable_periodic_and_is_kept_aside(tmp_path):
    folder = _run_folder(tmp_path)
    _truncate(folder / "last.pth")
    _truncate(folder / "iter_000006.pth")
    before = (folder / "last.pth").read_bytes()
    path, ck, notes = choose_resume_checkpoint(str(tmp_path))
    assert os.path.basename(path) == "iter_000004.pth" and ck["iteration"] == 4
    assert len(notes) == 1 and "last.pth" in notes[0] and "iter_000006.pth" in notes[0] and "iteration 4" in notes[0]
    assert not (folder / "last.pth").exists()
    aside = sorted(p.name for p in folder.iterdir() if ".unreadable-" in p.name)
    assert [n.split(".unreadable-")[0] for n in aside] == ["iter_000006.pth", "last.pth"]
    kept = next(p for p in folder.iterdir() if p.name.startswith("last.pth.unreadable-"))
    assert kept.read_bytes() == before  # renamed, byte for byte, never deleted
    # the set-aside files are no resume candidates any more; the next choice is stable
    assert os.path.basename(choose_resume_checkpoint(str(tmp_path))[0]) == "iter_000004.pth"


def test_periodic_copies_without_last_are_resumed(tmp_path):
    folder = _run_folder(tmp_path)
    (folder / "last.pth").unlink()
    path, ck, _ = choose_resume_checkpoint(str(tmp_path))
    assert os.path.basename(path) == "iter_000006.pth" and ck["iteration"] == 6


def test_no_readable_checkpoint_names_every_candidate_and_changes_nothing(tmp_path):
    folder = _run_folder(tmp_path, (2,))
    save_checkpoint(build_state(torch.nn.Linear(2, 2), iteration=2), str(tmp_path), is_best=True)
    for name in ("last.pth", "iter_000002.pth"):
        _truncate(folder / name)
    with pytest.raises(CheckpointError) as err:
        choose_resume_checkpoint(str(tmp_path))
    msg = str(err.value)
    assert str(folder / "last.pth") in msg and str(folder / "iter_000002.pth") in msg and "best.pth" in msg
    assert sorted(p.name for p in folder.iterdir()) == ["best.pth", "iter_000002.pth", "last.pth"]


def test_empty_run_folder_has_no_resume_point(tmp_path):
    assert choose_resume_checkpoint(str(tmp_path)) == (None, None, [])


