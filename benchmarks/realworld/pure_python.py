"""Pure Python: a list of records through JSON and pickle and back, no NumPy. A
bytes object of known size lives through the peak and its size is printed.

    python pure_python.py [RECORDS]          (default 1,000,000)
"""

import json
import pickle
import sys

RECORDS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000


def main():
    marker = b"m" * (RECORDS * 24)  # MARKER-LINE
    records = [
        {"id": i, "name": f"user{i}", "tags": ["a", "b", str(i % 7)], "score": i * 0.5}
        for i in range(RECORDS)
    ]
    text = json.dumps(records)
    back = json.loads(text)
    blob = pickle.dumps(back)
    again = pickle.loads(blob)
    assert again == records  # the round trip kept every record
    print("marker", sys.getsizeof(marker))
    print("sizes", len(text), len(blob), len(again))


if __name__ == "__main__":
    main()
