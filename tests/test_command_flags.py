"""Every command that takes configuration flags builds its configuration through :mod:`xecmae.flags`.

A command's flag for a key must give the same configuration as the full table's flag for that
key, and the commands that train take the whole table. A command that builds its configuration
some other way (or drops a key flag) fails here.
"""

import argparse

import pytest
import yaml

from xecmae.cli import COMMANDS, command_parser
from xecmae.config import SCHEMAS, InpainterConfig, MAEConfig, RegressorConfig
from xecmae.flags import add_config_flags, add_key_flag, config_from_args, flag_table

TRAINING = {"pretrain": MAEConfig, "inpaint": InpainterConfig, "finetune": RegressorConfig}
CONFIG_COMMANDS = {*TRAINING, "config", "inspect", "demo"}


def parse(name: str, *argv: str) -> argparse.Namespace:
    return command_parser(name)[1].parse_args(list(argv))


def key_flags(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Config key -> the option strings of the parser that set it."""
    return {a.dest[4:]: a.option_strings for a in parser._actions if a.dest.startswith("cfg:")}


def test_the_commands_with_config_flags_are_those_that_build_a_config():
    with_flags = {name for name in COMMANDS if key_flags(command_parser(name)[1])}
    assert with_flags == CONFIG_COMMANDS


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_training_commands_take_every_key_of_their_schema(name):
    options = {o for opts in key_flags(command_parser(name)[1]).values() for o in opts}
    table = {f"--{flag}" for flag in flag_table(TRAINING[name])}
    assert table <= options, sorted(table - options)


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_a_training_command_and_config_show_build_the_same_config(name):
    argv = ("--lr", "0.003", "--epochs", "3", "--train_root", "a.root", "--data.batch_size", "16")
    kind = {v: k for k, v in SCHEMAS.items()}[TRAINING[name]]
    trained = config_from_args(parse(name, *argv), TRAINING[name])
    shown = config_from_args(parse("config", "show", "--kind", kind, *argv), TRAINING[name])
    assert trained == shown
    assert (trained.training.lr, trained.training.epochs, trained.data.batch_size) == (0.003, 3, 16)


def test_inspect_flags_set_the_same_keys_as_the_table():
    inspect = parse("inspect", "x.root", "--tree", "t2", "--npho-branch", "n", "--time-branch", "t",
                    "--chunksize", "7", "--npho-threshold", "50")
    table = parse("pretrain", "--data.tree_name", "t2", "--data.npho_branch", "n", "--data.time_branch", "t",
                  "--data.chunksize", "7", "--training.time.npho_threshold", "50")
    cfg = config_from_args(inspect)
    assert cfg == config_from_args(table) != MAEConfig()
    assert (cfg.data.tree_name, cfg.data.chunksize, cfg.training.time.npho_threshold) == ("t2", 7, 50.0)


def test_inspect_reads_its_yaml_and_its_flags_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"tree_name": "from_yaml", "npho_branch": "n_yaml"}}))
    cfg = config_from_args(parse("inspect", "x.root", "--config", str(path), "--tree", "from_flag"))
    assert (cfg.data.tree_name, cfg.data.npho_branch) == ("from_flag", "n_yaml")


def test_demo_flags_are_config_keys_over_the_demo_preset(tmp_path):
    from xecmae.commands.demo import DEMO, demo_config

    default = demo_config(tmp_path, "a.root", "b.root", parse("demo"))
    assert (default.training.epochs, default.data.batch_size, default.training.seed) == (6, 32, 1)
    assert default.model.size == "tiny" and default.checkpoint.root_save_interval == 6
    assert default.checkpoint.save_dir == str(tmp_path) and default.data.train_path == "a.root"
    given = demo_config(tmp_path, "a.root", "b.root", parse("demo", "--epochs", "3", "--batch", "8", "--seed", "4"))
    table = config_from_args(parse("pretrain", "--epochs", "3", "--batch_size", "8", "--seed", "4"), MAEConfig,
                             DEMO)
    assert (given.training.epochs, given.data.batch_size, given.training.seed) == (3, 8, 4)
    assert (table.training.epochs, table.data.batch_size, table.training.seed) == (3, 8, 4)
    assert given.checkpoint.root_save_interval == 3 and DEMO["training"]["epochs"] == 6  # the preset is unchanged


def test_preset_lies_below_the_yaml_and_the_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"training": {"lr": 0.5}}))
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    preset = {"training": {"lr": 0.1, "epochs": 9}, "data": {"batch_size": 4}}
    cfg = config_from_args(parser.parse_args(["--config", str(path), "--batch_size", "8"]), MAEConfig, preset)
    assert (cfg.training.lr, cfg.training.epochs, cfg.data.batch_size) == (0.5, 9, 8)
    assert preset == {"training": {"lr": 0.1, "epochs": 9}, "data": {"batch_size": 4}}


def test_a_key_flag_not_given_leaves_the_default():
    parser = argparse.ArgumentParser()
    add_key_flag(parser, "--npho-threshold", key="training.time.npho_threshold", type=float)
    assert config_from_args(parser.parse_args([])) == MAEConfig()
    assert parser._actions[-1].metavar == "NPHO_THRESHOLD"


REQUIRED = ["--checkpoint", "c.pth", "--input", "x.root", "--output", "out"]


@pytest.mark.parametrize(("name", "argv"), [("show", ["x.root"]), ("predict", REQUIRED), ("validate", REQUIRED)])
def test_commands_without_a_config_default_to_the_configs_tree_branches_and_threshold(name, argv):
    args = parse(name, *argv)
    data = MAEConfig().data
    assert (args.tree, args.npho_branch, args.time_branch) == (data.tree_name, data.npho_branch, data.time_branch)
    if name == "show":
        assert args.npho_threshold == MAEConfig().training.time.npho_threshold
