"""Sample-quality and mode-collapse metrics, one module per family, all in the evaluator's feature space
(or, for NDB, pixel space) and all measured against real MNIST."""
