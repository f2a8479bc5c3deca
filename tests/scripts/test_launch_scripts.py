"""The bash scripts users start runs with end in main.py's one `error:` line and its status (2 for a user
error), without torchrun's ChildFailedError traceback; a genuine crash keeps torchrun's report
(scripts/torchrun.py)."""
import subprocess
import sys

from tests.engine.conftest import ROOT, env_for_subprocess, tiny_data  # noqa: F401 - fixture


def _bash(script, env_extra, *args, timeout=300):
    env = env_for_subprocess()
    env.update(env_extra)
    return subprocess.run(["bash", str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_line(res, status=2) -> str:
    text = res.stdout + res.stderr
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert res.returncode == status, text[-3000:]
    assert len(errors) == 1, text[-3000:]
    assert "Traceback" not in text and "ChildFailedError" not in text and "exitcode" not in text, text[-3000:]
    return errors[0]


def test_missing_pretrained_weights_under_two_torchrun_workers(tiny_data, tmp_path):
    """A fresh clone: configs/pascal/vitL.yml's pretrained backbone file is not there."""
    res = _bash("run_TaskDiffusion_pascal.sh", {"NPROC": "2", "DATA": tiny_data}, "--output_dir", str(tmp_path / "r"),
                "--opts", "backbone_weights=" + str(tmp_path / "missing.safetensors"))
    line = _one_line(res)
    assert "backbone_weights" in line and "missing.safetensors" in line, line
    assert not (tmp_path / "r").exists()


def test_bad_config_and_bad_device_in_the_nyud_script(tmp_path):
    line = _one_line(_bash("run_TaskDiffusion_nyud.sh", {"CONFIG": str(tmp_path / "nope.yml")}))
    assert "nope.yml" in line, line
    line = _one_line(_bash("run_TaskDiffusion_nyud.sh", {"DATA": str(tmp_path)}, "--device", "cuda:7",
                           "--output_dir", str(tmp_path / "r")))
    assert "cuda" in line, line


def test_infer_script_with_a_missing_checkpoint_under_torchrun(tmp_path):
    line = _one_line(_bash("infer_TaskDiffusion_pascal.sh", {"NPROC": "2", "CKPT": str(tmp_path / "gone.pth")}))
    assert "gone.pth" in line, line


def test_a_genuine_crash_keeps_torchruns_report(tmp_path):
    crash = tmp_path / "crash.py"
    crash.write_text("raise RuntimeError('a bug')\n")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "torchrun.py"), "--standalone", "--nproc_per_node=1",
                          str(crash)], cwd=tmp_path, env=env_for_subprocess(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1
    assert "ChildFailedError" in res.stderr and "exitcode  : 1" in res.stderr, res.stderr[-2000:]


def test_quiet_status_needs_every_failure_to_be_a_documented_status():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import torchrun as quiet
    finally:
        sys.path.pop(0)

    class F:
        def __init__(self, code, t):
            self.exitcode, self.timestamp = code, t

    class E:
        def __init__(self, *codes):
            self.failures = {i: F(c, i) for i, c in enumerate(codes)}

    assert quiet.quiet_status(E(2, 2)) == 2
    assert quiet.quiet_status(E(75)) == 75 and quiet.quiet_status(E(143, 143)) == 143
    assert quiet.quiet_status(E(2, 1)) is None  # one rank crashed: keep the report
    assert quiet.quiet_status(E(2, -15)) == 2   # the other worker was stopped by torchrun after it
    assert quiet.quiet_status(E(-9)) is None    # killed by a signal (OOM killer)
    assert quiet.quiet_status(E(-15, 2)) is None
    assert quiet.quiet_status(E()) is None
