"""The data's shape as the networks see it: images arrive as rows of C·28·28 pixels in [0, 1]."""

IMAGE_SIDE = 28
IMAGE_DIM = IMAGE_SIDE * IMAGE_SIDE  # one channel
N_CLASSES = 10
MNIST_CHANNELS = 1
