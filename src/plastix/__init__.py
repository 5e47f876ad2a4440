"""plastix: study and fight plasticity loss in deep reinforcement learning (JAX)."""

__version__ = "0.1.0"
