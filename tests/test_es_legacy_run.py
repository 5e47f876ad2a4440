"""ES run folders of plastix before the one run loop (config.json holds an ESConfig, one final checkpoint of
the mean policies and observation statistics): ``load_checkpoint`` reads them, a resume that would compute
is refused before compute, naming why."""

import json
import shutil
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from plastix import store
from plastix.algos.es import train_config_dict_from_es_config
from plastix.cli import main
from plastix.config import ConfigError
from plastix.training import load_checkpoint

# Written by plastix cf1bde5 (the commit before the run loop) with
#   plastix train --optimizer es --shift task --rounds 2 --es.popsize 4 --es.episode-steps 20
#     --total-timesteps 320 --hidden-sizes 8 8 --diagnostics-every 2 --seeds 0
#     --run-dir tests/fixtures/es_run_before_run_loop
OLD_ES_RUN = Path(__file__).parent / "fixtures" / "es_run_before_run_loop"


@pytest.fixture
def old_run(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(OLD_ES_RUN, run_dir)
    return run_dir


def test_load_checkpoint_reads_an_older_es_run(old_run):
    cfg, final = load_checkpoint(old_run)
    assert (cfg.optimizer, cfg.es.popsize, cfg.es.episode_steps) == ("es", 4, 20)
    assert (cfg.rounds, cfg.shift, cfg.hidden_sizes) == (2, "task", (8, 8))
    assert final.run is None  # the older checkpoint holds no ES state
    saved = ocp.StandardCheckpointer().restore((old_run / "checkpoints" / "000000004").absolute())
    assert final.params["policy"]["layer_1"]["kernel"].shape == (1, 17, 8)
    for layer, values in saved["params"]["policy"].items():
        for name, value in values.items():
            np.testing.assert_array_equal(final.params["policy"][layer][name], value)
    np.testing.assert_array_equal(final.obs_rms.mean, saved["obs_rms"]["mean"])


def test_an_older_es_run_is_finished_and_cannot_be_extended(old_run, capsys):
    parts = sorted(p.name for p in (old_run / store.METRICS_DIR).iterdir())
    assert main(["train", "--resume", str(old_run), "--quiet"]) == 0
    assert "has finished its 4 generations; nothing to do" in capsys.readouterr().err
    extend = ["--rounds", "4", "--steps-per-round", "160"]
    assert main(["train", "--resume", str(old_run), *extend, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is an ES run of an older plastix" in err and "checkpoint at generation 4 holds only" in err
    assert "cannot be extended" in err
    assert sorted(p.name for p in (old_run / store.METRICS_DIR).iterdir()) == parts  # nothing computed


def test_an_older_es_config_no_option_expresses_is_named():
    data = json.loads((OLD_ES_RUN / "config.json").read_text())["config"]
    assert train_config_dict_from_es_config(data, "config.json")["es"]["popsize"] == 4
    named = r"config.json: an ES run's config \(ESConfig\) whose eval_mean_policy \(False\) no plastix train"
    with pytest.raises(ConfigError, match=named):
        train_config_dict_from_es_config({**data, "eval_mean_policy": False}, "config.json")
    with pytest.raises(ConfigError, match="options this plastix does not know: antithetic"):
        train_config_dict_from_es_config({**data, "antithetic": True}, "config.json")
