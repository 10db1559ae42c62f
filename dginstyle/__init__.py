"""DGInStyle reproduction: data preparation, style-swapped generation, DG segmentation.

Kept import-light (no torch here) so that the Snakefile and `dginstyle --help` load fast.
"""

__version__ = "0.1.0"
