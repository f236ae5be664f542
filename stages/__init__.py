"""Thin DVC stage modules: `python -m stages.<name>` reads params, calls pipeline/, writes outputs.

Every stage runs through this package, so this is where the CPU kernels are chosen, from params.yaml's
`compute.cpu_kernels`, before any stage module imports torch or numpy (pipeline/common/cpu_kernels.py).
"""

from pipeline.common import cpu_kernels

cpu_kernels.pin_or_exit("params.yaml")
