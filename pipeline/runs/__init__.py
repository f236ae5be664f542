"""Tracked runs: a training of R replicas with its in-training collapse checks, and the evaluation of the
trained replicas, each with its MLflow runs. Above both gan (the generators it trains and samples) and
instrument (what judges them), so neither of those imports the other."""
