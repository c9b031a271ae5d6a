"""The StepLR sweeper app. Importing it registers its OmegaConf resolvers (src/directories.py), so that every
process that composes or reads its config (the CLI, joblib and submitit workers, tests) can resolve them."""

from src.directories import register_resolvers

register_resolvers()
