"""Hydra-configured learning-rate schedule experiments on MNIST."""
