"""Slice interpolation by latent diffusion: the training objective (``latent_diffusion``) and
full-volume inference (``pipeline``)."""
