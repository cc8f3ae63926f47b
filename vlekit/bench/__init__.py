"""Benchmarks: training and inference speed, batch search, FLOPs and MFU, profiles (``vlekit bench``)."""
