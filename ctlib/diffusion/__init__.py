"""Diffusion: noise schedules, eps / v / x0 parameterizations, the training loss (with min-SNR
weighting), samplers (DDPM, DDIM, DDIM inversion) sharing one signature, K-sample uncertainty maps,
and an EMA of model weights.

Conventions: tensors are ``(B, C, D, H, W)``; timesteps are raw integers ``0 .. T-1`` (the U-Net's
time embedding sees the same scale in training and sampling). The network (any callable
``network(x, timesteps)``) is adapted once into a ``denoiser.Denoiser`` with its prediction, schedule,
condition (concatenated to ``x_t`` along channels) and depth padding; the loss and the samplers take
that denoiser and know nothing of conditioning.

Import the modules qualified (``from ctlib.diffusion import samplers`` then ``samplers.ddim(...)``);
this package imports nothing on its own.
"""
