"""The level checks shared by the VAE and latent U-Net configs (ctlib.models.level_checks)."""

from __future__ import annotations

import pytest

from ctlib.models import latent_unet, level_checks, vae


def test_checks_name_the_config_and_the_problem():
    level_checks.check_levels("X", (32, 64), (False, True), 32)
    with pytest.raises(ValueError, match="X: attention_levels has 1 entries, channels has 2"):
        level_checks.check_levels("X", (32, 64), (False,), 32)
    with pytest.raises(ValueError, match=r"X: norm_num_groups=32 must divide every channel count, not \[48"):
        level_checks.check_levels("X", (32, 48), (False, False), 32)


def test_both_configs_use_them():
    with pytest.raises(ValueError, match=r"^VAEConfig: norm_num_groups=32 .* not \[30\]"):
        vae.VAEConfig(channels=(30, 64))
    with pytest.raises(ValueError, match="^LatentUNetConfig: attention_levels has 1 entries, channels has 2"):
        latent_unet.LatentUNetConfig(channels=(32, 64), attention_levels=(False,))
