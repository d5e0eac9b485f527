"""Three arrays on three lines: memtrace attributes each one's bytes to its line.

    memtrace python examples/numpy_lines.py

expect 80,000 / 8,000,000 / 80,000,000 bytes of NumPy array data on lines 12-14,
and NumPy's small shape/strides blocks shown apart as plain malloc.
"""

import numpy as np


def build():
    small = np.zeros((100, 100))
    medium = np.zeros((1000, 1000))
    large = np.zeros((10000, 1000))
    return small, medium, large


if __name__ == "__main__":
    arrays = build()
    print("built", sum(a.nbytes for a in arrays), "bytes of arrays")
