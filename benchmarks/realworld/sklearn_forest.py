"""scikit-learn: a RandomForest fit on a generated classification problem. The
training data's size is printed, so a test can find it at the heap peak.

    python sklearn_forest.py [SAMPLES]       (default 20,000)
"""

import sys

from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

SAMPLES = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
FEATURES = 40


def main():
    X, y = make_classification(n_samples=SAMPLES, n_features=FEATURES, random_state=0)  # DATA-LINE
    forest = RandomForestClassifier(n_estimators=50, n_jobs=1, random_state=0).fit(X, y)
    print("data", X.nbytes + y.nbytes)
    print("score", forest.score(X, y))


if __name__ == "__main__":
    main()
