"""plastix: study and fight plasticity loss in deep reinforcement learning (JAX).

Importing plastix turns on ``jax_enable_x64``: envpool's XLA interface only accepts float64 actions for
MuJoCo tasks, and the observation/reward statistics are kept in float64 as gymnasium keeps them. Every
network parameter and every loss is float32 by construction (``plastix.nets`` sets ``param_dtype`` and
casts inputs), so the learning arithmetic is the same as with x64 off.
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
