"""Helpers shared by test modules: real servers (PostgreSQL, SLURM) started for the tests."""
