"""Environments: the envpool bridge (MuJoCo and friends) and observation/reward normalisation."""
