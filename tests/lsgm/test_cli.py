"""The command lines beside training (lsgm.cli): hydra composes each command's config file from configs/ with the
training groups it shares, so the same override means the same in both, and bad input is one line and status 2."""

import subprocess
import sys

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from lsgm import config_dir, evaluate, sample
from lsgm.cli import BAD_INPUT, CommandError, UsageError, compose, run


def training_config(*overrides: str):
    """train_joint.py's config (configs/config.yaml) composed with `overrides`."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


@pytest.mark.parametrize("overrides", [
    ["sampler=dpm2m", "sampler.options.steps=3"],
    ["sampler=ddim", "sampler.options.eta=0.5"],
    ["sampler=ode", "sampler.options.rtol=1e-3", "+sampler.options.steps=8"],
    ["sampler=heun", "~sampler.options.steps"],
])
def test_the_sample_command_takes_the_sampler_overrides_of_training(overrides):
    command = compose(sample.CONFIG, ["ckpt=x.pt", *overrides])
    training = training_config(*overrides)
    assert OmegaConf.to_container(command.sampler) == OmegaConf.to_container(training.sampler)


def test_evaluate_shares_the_sampler_and_logger_groups_and_defaults_to_the_runs_own():
    command = compose(evaluate.CONFIG, ["ckpt=x.pt", "sampler=dpm2m", "sampler.options.steps=3", "logger=none"])
    training = training_config("sampler=dpm2m", "sampler.options.steps=3", "logger=none")
    assert command.sampler == training.sampler and command.logger.mode == training.logger.mode == "none"
    own = compose(evaluate.CONFIG, ["ckpt=x.pt", "+sampler.options.steps=3"])
    assert OmegaConf.to_container(own.sampler) == {"name": None, "options": {"steps": 3}}  # the run's, with steps=3
    assert own.logger.mode is None  # the run's own


@pytest.mark.parametrize("arguments, expected", [
    (["sampler.options.eta=0.5"], "unknown argument sampler.options.eta=0.5 (sampler.options holds the options "
                                  "that the sampler's config file lists: add another as +sampler.options.eta=0.5, as "
                                  "in training); valid: sampler=<ddim|ddpm|dpm2m|heun|ode|pc|sde>, sampler.name, "
                                  "sampler.options.method, sampler.options.rtol, sampler.options.atol, ckpt,"),
    (["sampler=dpm2m", "sampler.options.stpes=3"], "unknown argument sampler.options.stpes=3 (sampler.options"),
    (["samplr=dpm2m"], "unknown argument samplr=dpm2m; valid: sampler=<"),
    (["+extra=1"], "+extra=1: the keys of this command are those of its config (--help lists them); only a sampler "
                   "option is added or deleted (+sampler.options.KEY=VALUE, ~sampler.options.KEY)"),
    (["~num_samples"], "~num_samples: the keys of this command are those of its config"),
    (["sampler=euler_a"], "unknown sampler 'euler_a'; valid: ddim, ddpm, dpm2m, heun, ode, pc, sde"),
])
def test_arguments_hydra_cannot_compose_are_one_usage_error(arguments, expected):
    with pytest.raises(UsageError) as raised:
        compose(sample.CONFIG, ["ckpt=x.pt", *arguments])
    assert str(raised.value).startswith(expected) and "\n" not in str(raised.value), str(raised.value)


def test_a_sampler_node_without_a_name_is_one_usage_error():
    """`sampler={}` composes (the fuzz test found it); the check refuses it by name instead of an AttributeError."""
    from omegaconf import OmegaConf

    node = OmegaConf.create({})
    OmegaConf.set_struct(node, True)  # as composed: a missing key raises instead of reading None
    with pytest.raises(UsageError, match="sampler.name"):
        sample.check_sampler_config(node)


def test_valid_keys_follow_the_chosen_sampler():
    with pytest.raises(UsageError, match=r"valid: .*sampler\.name, sampler\.options\.steps, ckpt, "):
        compose(sample.CONFIG, ["sampler=dpm2m", "nope=1"])


def test_an_unknown_key_exits_2_with_one_line_before_anything_loads(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lsgm.sample", f"ckpt={tmp_path / 'none.pt'}", "options.steps=3"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == BAD_INPUT
    assert result.stderr.startswith("lsgm.sample: error: unknown argument options.steps=3; valid: sampler=<")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no hydra run folder, no outputs


def test_help_prints_the_composed_config_and_exits_0(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lsgm.apps.inpaint", "num_images=3", "--help"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m lsgm.apps.inpaint key=value ...")
    config = OmegaConf.create(result.stdout.split("\nconfig:\n", 1)[1])
    assert config.num_images == 3 and config.t_T == 250 and OmegaConf.is_missing(config, "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_every_command_composes_its_config_file_and_requires_a_checkpoint():
    for name in ("sample", "evaluate", "inpaint", "interpolate"):
        assert (config_dir() / f"{name}.yaml").is_file()
        with pytest.raises(UsageError, match=r"^missing required argument\(s\): ckpt=\.\.\.$"):
            compose(name)
        assert compose(name, ["ckpt=x.pt"]).ckpt == "x.pt"


def test_a_command_given_as_a_mapping_of_defaults_parses_the_same_way(capsys):
    """python -m lsgm.checkpoint passes its defaults as a mapping (no config file)."""
    defaults = {"source": "???", "destination": "???"}
    assert run(lambda cfg: (cfg.source, cfg.destination), defaults, "prog", ["source=a.pt", "destination=b.pt"]) \
        == ("a.pt", "b.pt")
    with pytest.raises(CommandError) as raised:
        run(lambda cfg: None, defaults, "prog", ["source=a.pt", "sauce=b.pt"])
    assert raised.value.code == BAD_INPUT
    assert str(raised.value) == "prog: error: unknown argument sauce=b.pt; valid: source, destination"
    with pytest.raises(CommandError, match=r"^prog: error: \+x=1: .*; no key is added \(\+\) or deleted \(~\)$"):
        run(lambda cfg: None, defaults, "prog", ["+x=1"])
