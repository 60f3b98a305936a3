"""Networks (MONAI-based): the per-slice 2D VAE, the 3D latent diffusion U-Net, the image-space regressor,
and the slice codec (``slice_codec.SliceCodec``: the 2D VAE run over a volume, HU <-> scaled latents).

Import the modules qualified (``from ctlib.models import vae`` then ``vae.build_vae(...)``).
"""
