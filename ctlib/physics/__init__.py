"""X-ray physics: HU -> linear attenuation and a differentiable Beer-Lambert DRR projector."""
