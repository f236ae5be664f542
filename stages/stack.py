"""DVC stage: build Stacked MNIST's index triples from the prepared MNIST training set."""

from pipeline.common import layout
from pipeline.common.console import run_main
from pipeline.common.params import load_params
from pipeline.data import stacked_mnist
from pipeline.data.mnist import load_prepared


def main() -> None:
    settings = load_params().stacked_mnist
    stacked = stacked_mnist.build(load_prepared(layout.PREPARED).y_train, settings.size, settings.seed)
    stacked_mnist.save(layout.STACKED, stacked)
    print(
        f"{layout.STACKED}: {len(stacked)} stacked images as index triples, "
        f"{len(set(stacked.modes.tolist()))} of {stacked_mnist.N_MODES} digit triples present"
    )


if __name__ == "__main__":
    run_main(main)
