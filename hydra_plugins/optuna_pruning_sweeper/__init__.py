"""hydra-optuna-sweeper extended with pruning, resumable studies and an end-of-sweep summary.

Select it with `override /hydra/sweeper: optuna_pruning` and a pruner with
`hydra/sweeper/pruner=median` (or hyperband, successive_halving, percentile, none).
"""
