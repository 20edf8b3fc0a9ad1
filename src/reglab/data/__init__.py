"""Data: synthetic sources, tables from files, bundled sets, scaling, the data module."""
