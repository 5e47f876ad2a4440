"""What the config needs to know about an env id beyond its family (``shifts.env_family``).

``preset_family(env_id)``: the family presets are declared for (``plastix.config.PRESET_FAMILIES``). It is the
env family, except for ``gymnasium:ID``, whose presets depend on its action space: ``gymnasium-box``
(continuous: the MuJoCo presets fit) or ``gymnasium-discrete`` (the discrete presets fit).

``check_env(env_id, shift)``: the env can be built (its optional library is installed, a task sequence's
envs share shapes) and returns ``(preset family, continuous actions)``; ``ValueError`` naming ``--env-id``.
"""

from __future__ import annotations

CONTINUOUS_FAMILIES = ("mujoco", "dmc", "gymnasium-box")


def check_env(env_id: str, shift: str) -> tuple[str, bool]:
    """``(preset family, continuous)`` of ``env_id`` after the family's own checks (see module docstring)."""
    from plastix.envs.shifts import env_family

    family = env_family(env_id)
    if family == "dmc":
        from plastix.envs.dmc_bridge import check_task_sequence

        check_task_sequence(env_id)
    elif family in ("gymnax", "craftax"):
        from plastix.envs.jax_envs import make_jax_env

        try:
            make_jax_env(env_id)
        except ImportError as err:
            raise ValueError(str(err)) from None
    elif family == "gymnasium":
        from plastix.envs.gymnasium_bridge import check_gymnasium_env

        summary = check_gymnasium_env(env_id, shift)
        family = "gymnasium-discrete" if summary["discrete"] else "gymnasium-box"
    return family, family in CONTINUOUS_FAMILIES


def preset_family(env_id: str) -> str:
    """The family ``env_id``'s presets are declared for (``gymnasium-box``/``-discrete`` for ``gymnasium:ID``)."""
    from plastix.envs.shifts import env_family

    family = env_family(env_id)
    if family != "gymnasium":
        return family
    from plastix.envs.gymnasium_bridge import gymnasium_ids, space_summary

    return "gymnasium-discrete" if space_summary(gymnasium_ids(env_id)[0])["discrete"] else "gymnasium-box"
