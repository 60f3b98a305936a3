"""Networks (MONAI-based): the per-slice 2D VAE, the 3D latent diffusion U-Net, the image-space regressor.

Import the modules qualified (``from ctlib.models import vae`` then ``vae.build_vae(...)``).
"""
