"""Ablation grids (variants x seeds) and their statistics, tables and plots (``vlekit ablate``)."""
