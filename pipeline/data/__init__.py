"""Getting MNIST: mirrors and verified download, IDX parsing, the prepared arrays."""
