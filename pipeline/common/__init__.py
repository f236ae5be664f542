"""Shared plumbing: params validation, MLflow tracking, repository layout, atomic writes, console, errors."""
