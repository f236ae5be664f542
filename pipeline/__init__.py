"""ganpipe: a reproducible pipeline for studying GAN training and mode collapse on MNIST."""

__version__ = "0.1.0"
