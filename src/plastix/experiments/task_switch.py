"""The OCP paper's task switch (Fig 3/5): PPO-trained value networks vs random init on Eq. 15.

For every run of the source experiment (e.g. ``ocp-fig1``'s ``activation=relu`` and ``activation=none``)
and every seed, the value MLP of the run's final checkpoint (``params["value"]``) is trained with full-batch
Adam on the Eq. 15 regression (``plastix.probes.eq15_dataset``: 1,000 train / 1,000 test samples, sigma
0.1) at each learning rate; so is a freshly initialised value MLP of the same architecture (source
``random-init/<variant>``, initialised with that seed). The curves are written as tidy rows
``source, seed, lr, step, split, loss`` to ``SWEEP_DIR/analyses/<experiment>/task_switch.parquet``.

Task relevance (the OCP paper's Sec. 3.2 made quantitative; ``task_switch = { alphas = [...] }``): the
paper argues that a trained network struggles with tasks *similar* to its own and learns a very different
one like a random-init network. Each seed's trained value network ``v_theta0`` is trained on targets at task
distance ``alpha`` from its own task, ``y_alpha = (1 - alpha) * v_theta0(X) + alpha * eq15(X)``
(``plastix.probes.interpolated_targets``; alpha = 0 is the task it already solves, alpha = 1 the Fig 3
switch), and a random-init network of the same architecture and seed on the same ``y_alpha``. Plasticity
loss at distance alpha is ``final test loss (trained) / final test loss (random init)`` (> 1: the trained
network learns worse than a fresh one). Rows ``source, seed, alpha, lr, step, split, loss`` go to
``SWEEP_DIR/analyses/<experiment>/task_relevance.parquet`` (a separate file, so the ``task_switch`` SQL view
keeps one schema).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from plastix.experiments import Experiment

RESULT = "task_switch.parquet"
RELEVANCE_RESULT = "task_relevance.parquet"


def result_path(sweep_dir: str | Path, name: str) -> Path:
    return Path(sweep_dir) / "analyses" / name / RESULT


def relevance_path(sweep_dir: str | Path, name: str) -> Path:
    return Path(sweep_dir) / "analyses" / name / RELEVANCE_RESULT


def final_value_params(run_dir: Path):
    """``(cfg, value params stacked over seeds)`` from the run's final orbax checkpoint."""
    from plastix.training import load_checkpoint

    try:
        cfg, state = load_checkpoint(run_dir, final=True)
    except ValueError as err:
        raise RuntimeError(f"{err}; rerun the sweep to finish it") from None
    return cfg, state.params["value"]


def _source_nets(exp: Experiment, sweep_dir: Path, input_dim: int):
    """Per source run of ``exp``: ``(run, seeds, apply_fn, trained value params, fresh value params)``, the
    params stacked over seeds. A fresh value MLP per seed uses CleanRL's init (orthogonal, head gain 1.0)."""
    import jax
    import jax.numpy as jnp

    from plastix.nets import MLP

    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    for run in manifest["experiments"][exp.name]["runs"]:
        cfg, trained = final_value_params(sweep_dir / "runs" / run)
        net = MLP(tuple(cfg.hidden_sizes), cfg.activation, 1, 1.0, cfg.layer_norm)
        seeds = cfg.seed_list
        keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds) + 10_000)
        # lax.map: vmapped orthogonal inits batch LAPACK QRs, which can deadlock jaxlib 0.10 on 2 cores.
        fresh = jax.lax.map(lambda k, net=net: net.init(k, jnp.zeros((1, input_dim)))["params"], keys)

        def apply_fn(p, x, net=net):
            return net.apply({"params": p}, x)

        yield run, seeds, apply_fn, trained, fresh


def _curve_rows(curves, source: str, seeds: list[int], axes: dict[str, list[float]]) -> list[pd.DataFrame]:
    """Tidy rows of ``RegressionCurves`` shaped ``[seeds, *axes, steps + 1]`` (``axes``: name -> values)."""
    frames = []
    for split, arr in (("train", curves.train_loss), ("test", curves.test_loss)):
        arr = np.asarray(arr, np.float64)
        grids = np.meshgrid(np.asarray(seeds), *(np.asarray(v, np.float64) for v in axes.values()),
                            np.arange(arr.shape[-1]), indexing="ij")
        cols = dict(zip(["seed", *axes, "step"], (g.reshape(-1) for g in grids)))
        frames.append(pd.DataFrame({"source": source, **cols, "split": split, "loss": arr.reshape(-1)}))
    return frames


def _write(out: Path, frames: list[pd.DataFrame], settings: dict) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    frame = pd.concat(frames, ignore_index=True)
    frame["seed"] = frame.seed.astype(np.int64)
    frame["step"] = frame.step.astype(np.int64)
    frame.to_parquet(tmp, index=False)
    (out.parent / "settings.json").write_text(json.dumps(settings, indent=2))
    tmp.replace(out)
    return out


def _up_to_date(out: Path, settings: dict) -> bool:
    saved = out.parent / "settings.json"
    return out.exists() and saved.exists() and json.loads(saved.read_text()) == settings


def _dataset(settings: dict):
    import jax

    from plastix.probes import eq15_dataset

    return eq15_dataset(jax.random.PRNGKey(settings["data_seed"]), settings["n_train"], settings["n_test"],
                        settings["x_dist"], settings["noise_std"])


def run_task_switch(exp: Experiment, sweep_dir: str | Path) -> Path:
    """Probe every source run of ``exp`` (see module docstring); skipped when its result already exists.

    With ``task_switch.alphas`` this is the task-relevance probe (``run_task_relevance``)."""
    import jax
    import jax.numpy as jnp

    from plastix.probes import regression_probe

    if "alphas" in exp.task_switch:
        return run_task_relevance(exp, sweep_dir)
    sweep_dir = Path(sweep_dir)
    out = result_path(sweep_dir, exp.name)
    settings = exp.task_switch
    if _up_to_date(out, settings):
        return out
    data = _dataset(settings)
    lrs = jnp.asarray(settings["learning_rates"], jnp.float32)
    steps = int(settings["steps"])
    frames = []
    for run, seeds, apply_fn, trained, fresh in _source_nets(exp, sweep_dir, data[0].shape[1]):

        def probe(params, lr, apply_fn=apply_fn):
            return regression_probe(apply_fn, params, *data, lr=lr, steps=steps)

        # vmap over seeds (params) and learning rates.
        curves = jax.jit(jax.vmap(jax.vmap(probe, in_axes=(None, 0)), in_axes=(0, None)))
        for source, params in ((run, trained), (f"random-init/{run}", fresh)):
            c = jax.device_get(curves(params, lrs))
            frames += _curve_rows(c, source, seeds, {"lr": settings["learning_rates"]})
    return _write(out, frames, settings)


def run_task_relevance(exp: Experiment, sweep_dir: str | Path) -> Path:
    """The task-relevance probe (module docstring): every source run's value nets, and random-init ones, on
    ``y_alpha = (1 - alpha) * v_theta0(X) + alpha * eq15(X)`` for every alpha and learning rate."""
    import jax
    import jax.numpy as jnp

    from plastix.probes import interpolated_targets, regression_probe

    sweep_dir = Path(sweep_dir)
    out = relevance_path(sweep_dir, exp.name)
    settings = exp.task_switch
    if _up_to_date(out, settings):
        return out
    x_train, y_train, x_test, y_test = _dataset(settings)
    alphas = jnp.asarray(settings["alphas"], jnp.float32)
    lrs = jnp.asarray(settings["learning_rates"], jnp.float32)
    steps = int(settings["steps"])
    frames = []
    for run, seeds, apply_fn, trained, fresh in _source_nets(exp, sweep_dir, x_train.shape[1]):
        own = jax.vmap(lambda p, apply_fn=apply_fn: (apply_fn(p, x_train)[..., 0], apply_fn(p, x_test)[..., 0]))
        own_train, own_test = own(trained)  # v_theta0(X) per seed: [seeds, N]

        def probe(params, o_train, o_test, alpha, lr, apply_fn=apply_fn):
            return regression_probe(apply_fn, params, x_train, interpolated_targets(o_train, y_train, alpha),
                                    x_test, interpolated_targets(o_test, y_test, alpha), lr=lr, steps=steps)

        over_lr = jax.vmap(probe, in_axes=(None, None, None, None, 0))
        over_alpha = jax.vmap(over_lr, in_axes=(None, None, None, 0, None))
        curves = jax.jit(jax.vmap(over_alpha, in_axes=(0, 0, 0, None, None)))  # [seeds, alphas, lrs, steps + 1]
        for source, params in ((run, trained), (f"random-init/{run}", fresh)):
            c = jax.device_get(curves(params, own_train, own_test, alphas, lrs))
            frames += _curve_rows(c, source, seeds, {"alpha": settings["alphas"], "lr": settings["learning_rates"]})
    return _write(out, frames, settings)


def read_task_switch(sweep_dir: str | Path, name: str) -> pd.DataFrame | None:
    path = result_path(sweep_dir, name)
    return pd.read_parquet(path) if path.exists() else None


def read_task_relevance(sweep_dir: str | Path, name: str) -> pd.DataFrame | None:
    path = relevance_path(sweep_dir, name)
    return pd.read_parquet(path) if path.exists() else None
