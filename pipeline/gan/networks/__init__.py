"""The networks, one module per architecture family, and the two mechanisms that modify a discriminator.

- `mlp`: the seed's MLP (every preset before the DCGAN family).
- `dcgan`: DCGAN-style conv nets for 28x28.
- `unrolled`: the Unrolled-GAN nets of PacGAN's Table 3 (Stacked MNIST; D with batch norm).
- `packing.pack_rows`: PacGAN's packing, one reshape at the start of each D's forward.
- `spectral_norm.spectral_norm_every_layer`: spectral normalisation, one wrapper over a built D.

Every family has the same constructor shapes: Generator(z_dim, width, conditional, channels) and
Discriminator(width, conditional, sigmoid_output, channels, pack); both take images as (N, C·28·28) rows.
"""

from pipeline.gan.networks import dcgan, mlp, unrolled
from pipeline.gan.networks.shapes import IMAGE_DIM, IMAGE_SIDE, MNIST_CHANNELS, N_CLASSES

# The seed's names: the MLP family is what `Generator` and `Discriminator` meant before the DCGAN.
Generator, Discriminator = mlp.Generator, mlp.Discriminator

ARCHITECTURES = {"mlp": mlp, "dcgan": dcgan, "unrolled": unrolled}

__all__ = ["ARCHITECTURES", "Discriminator", "Generator", "IMAGE_DIM", "IMAGE_SIDE", "MNIST_CHANNELS", "N_CLASSES"]
