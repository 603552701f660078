"""Where lsgm finds its configs: the clone's configs/ here, the installed copy in tests/test_install.py."""

from pathlib import Path

import lsgm
from lsgm.cli import sampler_defaults

from .conftest import CONFIG_DIR


def test_config_dir_in_a_clone_is_its_top_level_configs_folder():
    assert lsgm.config_dir() == Path(CONFIG_DIR)
    assert (lsgm.config_dir() / "config.yaml").is_file()


def test_sampler_defaults_come_from_the_config_folder():
    assert sampler_defaults("dpm2m") == {"steps": 20}
    assert sampler_defaults("no_such_sampler") == {}
