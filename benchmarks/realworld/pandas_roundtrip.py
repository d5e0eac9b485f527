"""pandas round trip: a DataFrame with two string columns written to CSV and read
back, then a groupby and a merge. A NumPy array of known size is held across
`to_csv` (one long C call) and printed, so a test can find it at the heap peak.

    python pandas_roundtrip.py [ROWS [MARKER_BYTES]]   (default 2,000,000 rows, 256 MiB)
"""

import os
import sys
import tempfile

import numpy as np
import pandas as pd

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
MARKER = int(sys.argv[2]) if len(sys.argv) > 2 else 256 << 20  # bytes held across to_csv


def main():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "id": np.arange(ROWS),
            "x": rng.random(ROWS),
            "name": [f"name{i}" for i in range(ROWS)],
            "city": [f"city{i % 997}" for i in range(ROWS)],
        }
    )
    path = os.path.join(tempfile.mkdtemp(), "table.csv")
    marker = np.ones(MARKER // 8)  # MARKER-LINE
    df.to_csv(path, index=False)
    print("marker", marker.nbytes)
    del marker, df
    back = pd.read_csv(path)
    means = back.groupby("city")["x"].mean().rename("x_mean").reset_index()
    merged = back.merge(means, on="city")
    os.unlink(path)
    os.rmdir(os.path.dirname(path))
    print("rows", len(merged))


if __name__ == "__main__":
    main()
