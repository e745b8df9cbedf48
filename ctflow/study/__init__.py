"""Sparse-view CT studies on Dask: a config, a task grid, a results table and a report."""
