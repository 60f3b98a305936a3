"""Slice interpolation by latent diffusion: thick slices in, thin slices out (x2 / x4 / x6).

- ``thick_slices``: thick-slice simulation from thin CT (slab averages or decimation) with exact
  geometry, and the linear / cubic z-interpolation baselines.
- ``preprocess`` and ``datasets``: cached volumes, splits, thin / thick pair patches for training.
- ``latent_diffusion``: the training objective on per-slice VAE latents (3D U-Net denoiser).
- ``bundle`` and ``regression``: trained runs loaded for inference (diffusion, regressor baseline).
- ``pipeline``: full-volume inference in overlapping z-windows with data consistency.
- ``scoring``: the protocol (synthesized slices only, in the body mask, named HU window).
- ``evaluation``, ``ablation``, ``figures``: method comparison, sampler ablation, publication figures.
- ``release`` and ``model_card``: trained runs exported to ``weights/`` (safetensors, config, card,
  checksums) and loaded back without pickles.
- ``cli``: ``ctlib interpolate``.
"""
