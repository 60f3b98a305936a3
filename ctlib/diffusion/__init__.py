"""Diffusion: noise schedules, eps / v / x0 parameterizations, the training loss (with min-SNR
weighting), samplers (DDPM, DDIM, DDIM inversion) sharing one signature, K-sample uncertainty maps,
and an EMA of model weights.

Conventions: tensors are ``(B, C, D, H, W)``; timesteps are raw integers ``0 .. T-1`` (the U-Net's
time embedding sees the same scale in training and sampling); the model is any callable
``model(x, timesteps)`` and the condition is concatenated to ``x_t`` along channels.

Import the modules qualified (``from ctlib.diffusion import samplers`` then ``samplers.ddim(...)``);
this package imports nothing on its own.
"""
