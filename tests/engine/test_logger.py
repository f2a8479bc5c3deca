"""utils/logger.py: plain progress lines for non-interactive runs, log.txt on rank 0 only."""
from utils.logger import Progress, close_logger, format_seconds, interactive, setup_logger


def test_plain_progress_lines_in_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert not interactive()
    setup_logger(str(tmp_path), rank=0)
    p = Progress(10, start=4, desc="train", every=2)
    assert p.bar is None
    for _ in range(6):
        p.update(1, loss=1.25, lr=2e-5)
    p.close()
    close_logger()
    lines = [x for x in (tmp_path / "log.txt").read_text().splitlines() if "train" in x]
    assert len(lines) == 3 and "train 6/10" in lines[0] and "train 10/10" in lines[-1]
    assert "loss 1.2500" in lines[0] and "lr 2e-05" in lines[0] and "it/s" in lines[0] and "ETA" in lines[0]


def test_other_ranks_write_no_file(tmp_path):
    setup_logger(str(tmp_path / "r1"), rank=1).info("hidden")
    close_logger()
    assert not (tmp_path / "r1" / "log.txt").exists()
    assert format_seconds(3725) == "1:02:05" and format_seconds(65) == "01:05"
