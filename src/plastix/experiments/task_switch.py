"""The OCP paper's task switch (Fig 3/5): PPO-trained value networks vs random init on Eq. 15.

For every run of the source experiment (e.g. ``ocp-fig1``'s ``activation=relu`` and ``activation=none``)
and every seed, the value MLP of the run's final checkpoint (``params["value"]``) is trained with full-batch
Adam on the Eq. 15 regression (``plastix.probes.eq15_dataset``: 1,000 train / 1,000 test samples, sigma
0.1) at each learning rate; so is a freshly initialised value MLP of the same architecture (source
``random-init/<variant>``, initialised with that seed). The curves are written as tidy rows
``source, seed, lr, step, split, loss`` to ``SWEEP_DIR/analyses/<experiment>/task_switch.parquet``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from plastix import store
from plastix.experiments import Experiment

RESULT = "task_switch.parquet"


def result_path(sweep_dir: str | Path, name: str) -> Path:
    return Path(sweep_dir) / "analyses" / name / RESULT


def final_value_params(run_dir: Path):
    """``(cfg, value params stacked over seeds)`` from the run's final orbax checkpoint."""
    from plastix.training import load_checkpoint

    try:
        cfg, state = load_checkpoint(run_dir, final=True)
    except ValueError as err:
        raise RuntimeError(f"{err}; rerun the sweep to finish it") from None
    return cfg, state.params["value"]


def run_task_switch(exp: Experiment, sweep_dir: str | Path) -> Path:
    """Probe every source run of ``exp`` (see module docstring); skipped when its result already exists."""
    import jax
    import jax.numpy as jnp

    from plastix.nets import MLP
    from plastix.probes import eq15_dataset, regression_probe

    out = result_path(sweep_dir, exp.name)
    settings = exp.task_switch
    saved = out.parent / "settings.json"
    if out.exists() and saved.exists() and json.loads(saved.read_text()) == settings:
        return out
    manifest = json.loads((Path(sweep_dir) / "sweep.json").read_text())
    runs = manifest["experiments"][exp.name]["runs"]
    data = eq15_dataset(
        jax.random.PRNGKey(settings["data_seed"]), settings["n_train"], settings["n_test"], settings["x_dist"],
        settings["noise_std"],
    )
    lrs = jnp.asarray(settings["learning_rates"], jnp.float32)
    steps = int(settings["steps"])
    frames = []
    for run in runs:
        cfg, trained = final_value_params(Path(sweep_dir) / "runs" / run)
        net = MLP(tuple(cfg.hidden_sizes), cfg.activation, 1, 1.0, cfg.layer_norm)
        seeds = cfg.seed_list
        # A fresh value MLP per seed (CleanRL's init: orthogonal, gain 1.0 on the head).
        keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds) + 10_000)
        # lax.map: vmapped orthogonal inits batch LAPACK QRs, which can deadlock jaxlib 0.10 on 2 cores.
        fresh = jax.lax.map(lambda k: net.init(k, jnp.zeros((1, data[0].shape[1])))["params"], keys)

        def apply_fn(p, x):
            return net.apply({"params": p}, x)

        def probe(params, lr):
            return regression_probe(apply_fn, params, *data, lr=lr, steps=steps)

        # vmap over seeds (params) and learning rates.
        curves = jax.jit(jax.vmap(jax.vmap(probe, in_axes=(None, 0)), in_axes=(0, None)))
        for source, params in ((run, trained), (f"random-init/{run}", fresh)):
            c = jax.device_get(curves(params, lrs))
            for split, arr in (("train", c.train_loss), ("test", c.test_loss)):
                arr = np.asarray(arr, np.float64)  # [seeds, lrs, steps + 1]
                s, l, t = arr.shape
                frames.append(pd.DataFrame({
                    "source": source,
                    "seed": np.repeat(np.asarray(seeds), l * t),
                    "lr": np.tile(np.repeat(np.asarray(settings["learning_rates"], np.float64), t), s),
                    "step": np.tile(np.arange(t), s * l),
                    "split": split,
                    "loss": arr.reshape(-1),
                }))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
    saved.write_text(json.dumps(settings, indent=2))
    tmp.replace(out)
    return out


def read_task_switch(sweep_dir: str | Path, name: str) -> pd.DataFrame | None:
    path = result_path(sweep_dir, name)
    return pd.read_parquet(path) if path.exists() else None
