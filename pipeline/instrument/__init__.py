"""The collapse instrument: the evaluator classifier, the real reference, calibration, metrics and the verdict."""
