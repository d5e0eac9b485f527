"""What fills the heap, by type: `memtrace run --objects`.

    memtrace run --objects -- python examples/objects_census.py

expect, at exit: exactly 100,000 `Order` objects, one NumPy array owning 8,000,000
bytes (from the line `prices = ...`) and one view of 4,000,000 bytes; at the heap peak
also the 80,000,000-byte array `scratch`, named by its line.
"""

import numpy as np


class Order:
    __slots__ = ("qty", "price")

    def __init__(self, qty, price):
        self.qty = qty
        self.price = price


def price_all(prices):
    scratch = np.repeat(prices, 10)  # 80,000,000 bytes, only here
    total = 0.0
    for k in range(1, 40):  # some work while it is held
        total += float(np.sqrt(scratch[::k]).sum())
    return total


if __name__ == "__main__":
    prices = np.full(1_000_000, 1.5)  # 8,000,000 bytes
    cheap = prices[: len(prices) // 2]  # a view: 4,000,000 bytes, no data of its own
    orders = [Order(i % 7, float(i)) for i in range(100_000)]
    print(f"total {price_all(prices):.1f} over {len(orders)} orders, {cheap.size} cheap")
