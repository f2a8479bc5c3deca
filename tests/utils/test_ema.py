"""utils/ema.py: the EMA arithmetic (on timm's ModelEmaV3) against hand-computed values, its schedule,
the BatchNorm buffer rules, the checkpoint state and the choice of weights for prediction."""
import pytest
import torch
from torch import nn

from utils.ema import WeightEMA, build_ema, pick_weights


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def _shift(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        model[1].running_mean.fill_(value)
        model[1].num_batches_tracked.fill_(int(value) + 7)


def test_average_matches_hand_computation():
    model = _net()
    _shift(model, 1.0)
    ema = WeightEMA(model, decay=0.75)
    _shift(model, 3.0)
    assert ema.update(model, 1)
    w = ema.module[0].weight
    assert torch.allclose(w, torch.full_like(w, 0.75 * 1.0 + 0.25 * 3.0))  # 1.5
    _shift(model, 5.0)
    ema.update(model, 2)
    assert torch.allclose(ema.module[0].weight, torch.full_like(w, 0.75 * 1.5 + 0.25 * 5.0))
    # buffers: 'average' averages running_mean like the weights, integer counters are copied
    assert torch.allclose(ema.module[1].running_mean, torch.full((2,), 0.75 * 1.5 + 0.25 * 5.0))
    assert int(ema.module[1].num_batches_tracked) == 12
    assert ema.updates == 2
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_copy_buffers_takes_the_raw_statistics():
    model = _net()
    _shift(model, 1.0)
    ema = WeightEMA(model, decay=0.5, buffers="copy")
    _shift(model, 3.0)
    ema.update(model, 1)
    assert torch.allclose(ema.module[0].weight, torch.full((2, 2), 2.0))
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 3.0))


def test_start_iter_follows_the_raw_weights_then_averages_every_n():
    model = _net()
    ema = WeightEMA(model, decay=0.5, start_iter=2, every=2)
    _shift(model, 4.0)
    assert not ema.update(model, 1)  # not a multiple of every
    assert ema.update(model, 2)  # <= start_iter: a copy
    assert torch.equal(ema.module[0].weight, model[0].weight) and ema.updates == 0
    _shift(model, 8.0)
    assert not ema.update(model, 3)
    ema.update(model, 4)
    assert torch.allclose(ema.module[0].weight, torch.full((2, 2), 6.0)) and ema.updates == 1


def test_state_dict_round_trip_is_exact():
    model = _net()
    ema = WeightEMA(model, decay=0.9)
    _shift(model, 2.0)
    ema.update(model, 1)
    other = WeightEMA(_net(), decay=0.9)
    other.load_state_dict(ema.state_dict())
    for (k, a), b in zip(ema.module.state_dict().items(), other.module.state_dict().values()):
        assert torch.equal(a, b), k
    assert other.updates == 1
    assert ema.num_bytes() == sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_off_by_default_and_decay_checked():
    assert build_ema({"ema": {"decay": None}}, _net()) is None
    assert build_ema({}, _net()) is None
    assert isinstance(build_ema({"ema": {"decay": 0.99}}, _net()), WeightEMA)
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(_net(), decay=1.0)


def test_pick_weights_prefers_the_ema_unless_raw():
    raw_sd = {"w": torch.zeros(1)}
    ema_sd = {"w": torch.ones(1)}
    ck = {"model": raw_sd, "ema": {"state": ema_sd}}
    got, which = pick_weights(ck)
    assert which == "ema" and got["model"] is ema_sd and ck["model"] is raw_sd
    got, which = pick_weights(ck, raw=True)
    assert which == "raw" and got["model"] is raw_sd
    assert pick_weights({"model": raw_sd}) == ({"model": raw_sd}, "raw")


def test_config_keys_and_select_check(tmp_path):
    from engine.config import ConfigError, load_config
    from tests.engine.conftest import CONFIG

    cfg = load_config(CONFIG)
    assert cfg.ema.decay is None and cfg.ema.evaluate == "both" and cfg.ema.select == "ema"
    cfg = load_config(CONFIG, opts=["ema.decay=0.999", "ema.evaluate=raw"])
    assert cfg.ema.decay == 0.999 and cfg.ema.select == "raw"
    with pytest.raises(ConfigError, match="ema.select"):
        load_config(CONFIG, opts=["ema.decay=0.999", "ema.evaluate=raw", "ema.select=ema"])
    with pytest.raises(ConfigError, match="ema.decay"):
        load_config(CONFIG, opts=["ema.decay=1.5"])
