import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xecmae.config import ConfigError, MAEConfig
from xecmae.configload import load_config, validate
from xecmae.flags import add_config_flags, config_from_args

SHIPPED = Path(__file__).resolve().parents[1] / "config" / "mae" / "mae_config.yaml"


def parse(*argv: str) -> MAEConfig:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_shipped_config_loads_with_the_specification_defaults():
    cfg = load_config(SHIPPED)
    assert cfg.model.mask_ratio == 0.6 and cfg.model.encoder_dim == 1024 and cfg.model.decoder_dim == 128
    assert cfg.model.predict_channels == ["npho", "time"] and cfg.model.outer_mode == "finegrid"
    assert cfg.training.loss_fn == "smooth_l1" and cfg.training.time.npho_threshold == 100
    assert cfg.normalization.npho_scale == 1000 and cfg.normalization.sentinel_time == -1.0


def test_defaults_follow_the_specification_table():
    t = MAEConfig().training
    assert (t.loss_beta, t.npho_weight, t.time.weight, t.time.mask_ratio_scale) == (1.0, 1.0, 1.0, 1.0)
    assert t.time.use_npho_weight and not t.auto_channel_weight and not t.track_mae_rmse and not t.track_metrics
    assert t.grad_accum_steps == 1 and t.ema_decay is None
    assert not t.npho_loss_weight.enabled and t.npho_loss_weight.alpha == 0.5
    assert not t.intensity_reweighting.enabled
    assert MAEConfig().model.outer_fine_pool is None


def test_loading_never_writes_the_users_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  mask_ratio: 0.5\ntime_mask_ratio_scale: 2.0\n")
    before = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns
    with pytest.warns(FutureWarning):
        load_config(path, {"training.epochs": "3"})
    assert (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) == before


def test_misspelt_key_names_its_path_and_the_closest_key():
    with pytest.raises(ConfigError, match=r"model\.mask_ration: unknown key \(did you mean mask_ratio\?\)"):
        validate({"model": {"mask_ration": 0.5}})
    with pytest.raises(ConfigError, match=r"training\.time\.wieght: unknown key \(did you mean weight\?\)"):
        validate({"training": {"time": {"wieght": 1.0}}})
    with pytest.raises(ConfigError, match=r"trainig: unknown key \(did you mean training\?\)"):
        validate({"trainig": {}})


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"training\.epochs: .*integer.*'ten'"):
        validate({"training": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"training: expected a section"):
        validate({"training": 3})


@pytest.mark.parametrize("raw,message", [
    ({"model": {"mask_ratio": 1.5}}, r"model\.mask_ratio"),
    ({"model": {"mask_ratio": 0.0}}, r"model\.mask_ratio"),
    ({"training": {"loss_fn": "hinge"}}, r"training\.loss_fn"),
    ({"data": {"batch_size": 0}}, r"data\.batch_size"),
    ({"model": {"encoder_dim": 100}}, r"model\.encoder_dim: must be a positive multiple of 32"),
    ({"model": {"outer_fine_pool": [4, 4]}}, r"model\.outer_fine_pool"),
    ({"model": {"predict_channels": ["time"]}}, r"model\.predict_channels"),
])
def test_bad_values_are_refused_with_their_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        validate(raw)


@pytest.mark.parametrize("legacy,nested,value", [
    ({"training": {"time_weight": 2.0}}, ("training", "time", "weight"), 2.0),
    ({"training": {"use_npho_time_weight": False}}, ("training", "time", "use_npho_weight"), False),
    ({"training": {"npho_threshold": 50}}, ("training", "time", "npho_threshold"), 50),
    ({"training": {"time_mask_ratio_scale": 3.0}}, ("training", "time", "mask_ratio_scale"), 3.0),
    ({"model": {"time_mask_ratio_scale": 3.0}}, ("training", "time", "mask_ratio_scale"), 3.0),
    ({"time_mask_ratio_scale": 3.0}, ("training", "time", "mask_ratio_scale"), 3.0),
    ({"npho_threshold": 20}, ("training", "time", "npho_threshold"), 20),
    ({"use_npho_time_weight": False}, ("training", "time", "use_npho_weight"), False),
])
def test_legacy_keys_migrate_with_a_deprecation_warning(tmp_path, legacy, nested, value):
    path = tmp_path / "legacy.yaml"
    path.write_text(yaml.safe_dump(legacy))
    with pytest.warns(FutureWarning, match="deprecated"):
        cfg = load_config(path)
    section = cfg
    for key in nested:
        section = getattr(section, key)
    assert section == value


def test_legacy_and_nested_key_disagreeing_is_an_error(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump({"npho_threshold": 20, "training": {"time": {"npho_threshold": 50}}}))
    with pytest.raises(ConfigError, match="both set"):
        load_config(path)


def test_explicit_zero_and_false_on_the_command_line_are_honoured():
    cfg = parse("--config", str(SHIPPED), "--grad_clip", "0", "--amp", "false", "--save_interval", "0",
                "--training.time.weight", "0")
    assert cfg.training.grad_clip == 0.0
    assert cfg.training.amp is False
    assert cfg.training.time.weight == 0.0


def test_quick_start_flags_override_the_yaml():
    cfg = parse("--config", str(SHIPPED), "--epochs", "50", "--train_root", "/path/to/train",
                "--save_path", "mae_pretrained.pth", "--batch_size", "64",
                "--outer_mode", "finegrid", "--outer_fine_pool", "3", "3")
    assert cfg.training.epochs == 50 and cfg.data.batch_size == 64
    assert cfg.data.train_path in ("/path/to/train", ["/path/to/train"])
    assert cfg.checkpoint.save_path == "mae_pretrained.pth"
    assert cfg.model.outer_fine_pool == (3, 3)


def test_flags_cover_every_scalar_key_and_accept_null_and_bare_booleans():
    cfg = parse("--ema_decay", "0.999", "--track_metrics", "--outer_fine_pool", "null", "--checkpoint.run_name", "x")
    assert cfg.training.ema_decay == 0.999 and cfg.training.track_metrics and cfg.checkpoint.run_name == "x"
    assert parse("--ema_decay", "null").training.ema_decay is None


def test_named_size_fills_dimensions_and_explicit_keys_win():
    tiny = validate({"model": {"size": "tiny"}}).model
    assert tiny.encoder_dim == 128 and tiny.num_fusion_layers == 1
    custom = validate({"model": {"size": "tiny", "encoder_dim": 256}}).model
    assert custom.encoder_dim == 256 and custom.decoder_dim == tiny.decoder_dim


def test_config_show_prints_yaml_that_reloads_to_the_same_configuration(tmp_path):
    out = subprocess.run([sys.executable, "-m", "xecmae.cli", "config", "show", "--config", str(SHIPPED),
                          "--epochs", "7", "--mask_ratio", "0.5"], capture_output=True, text=True, check=True)
    shown = yaml.safe_load(out.stdout)
    assert shown["training"]["epochs"] == 7 and shown["model"]["mask_ratio"] == 0.5
    assert validate(shown) == load_config(SHIPPED, {"training.epochs": 7, "model.mask_ratio": 0.5})


def test_config_show_reports_errors_in_one_line():
    out = subprocess.run([sys.executable, "-m", "xecmae.cli", "config", "show", "--mask_ratio", "2"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "model.mask_ratio" in out.stderr and "Traceback" not in out.stderr
