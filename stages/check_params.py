"""DVC stage: validate params.yaml before any other stage runs.

DVC deletes a stage's outputs before it starts the stage's command, so a param refused inside a stage
would already have cost that stage's outputs. Every stage depends on this one's output, so a refused
param stops `dvc repro` / `dvc exp run` here and every other output stays as it was. The output holds
no param values: a valid change leaves it byte-identical, so it never re-runs a stage by itself.
"""

from pipeline.common import atomic, layout
from pipeline.common.console import run_main
from pipeline.common.params import load_params

STAMP = "params.yaml passed pipeline/common/params.py's checks\n"


def main() -> None:
    load_params()
    atomic.write_text(layout.PARAMS_CHECK, STAMP)


if __name__ == "__main__":
    run_main(main)
