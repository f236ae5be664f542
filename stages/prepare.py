"""DVC stage: parse the IDX files into one compact file of uint8 images and labels."""

from pipeline.common import atomic, layout
from pipeline.common.console import run_main
from pipeline.data.mnist import read_split
from pipeline.common.params import load_params


def main() -> None:
    load_params()  # refuse bad params before any work, like every stage
    x_train, y_train = read_split(layout.RAW_DIR, "train")
    x_test, y_test = read_split(layout.RAW_DIR, "t10k")
    atomic.save_npz(layout.PREPARED, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"{layout.PREPARED}: {len(x_train)} train and {len(x_test)} test images")


if __name__ == "__main__":
    run_main(main)
