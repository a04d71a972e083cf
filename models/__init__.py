"""Small, faithful reference models of the systems torchdx is built for, each under contracts.

Subpackages: ``models.audio`` (STFT front end, synthetic noisy speech, metrics),
``models.paraformer`` (non-autoregressive ASR with a CIF predictor), ``models.sgmse``
(noise-conditioned score model with classifier-free guidance), ``models.diffusion_buffer``
(online BBED diffusion buffer) and ``models.audiosr`` (latent-diffusion U-Net with a global
encoder). Import the subpackage you need; this package imports nothing heavy.
"""

__all__: list[str] = []
