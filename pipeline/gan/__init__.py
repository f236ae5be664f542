"""The GANs: networks, objectives, the variant registry, the trainer, checkpoints and sampling."""
