"""The scikit-learn estimators on real data that ships with scikit-learn:
python bench/exp_sklearn.py [--splits 5]

breast_cancer and digits (classification: accuracy) and diabetes
(regression: R²), each on ``--splits`` random 75/25 train/test splits
(stratified for the classifiers). Every estimator runs behind a
StandardScaler in a Pipeline. fastbilevel's HyperLogisticRegression /
HyperRidge with the default settings (hyper="l2", and "feature_l2") against
scikit-learn's LogisticRegressionCV(Cs=20) / RidgeCV(alphas=20 values from
1e-4 to 1e4). Fit times are medians over the splits, after one warm-up fit
(which compiles the kernels in a cold environment). Prints a Markdown table.
"""
import argparse
import time
import warnings

import numpy as np


def main(splits=5):
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fastbilevel.sklearn import HyperLogisticRegression, HyperRidge

    warnings.simplefilter("ignore", FutureWarning)   # LogisticRegressionCV's 1.10 changes
    cases = [
        ("breast_cancer", load_breast_cancer, "accuracy", {
            "LogisticRegressionCV(Cs=20)": lambda: LogisticRegressionCV(Cs=20, max_iter=5000),
            "HyperLogisticRegression()": lambda: HyperLogisticRegression(),
            "HyperLogisticRegression(hyper='feature_l2')":
                lambda: HyperLogisticRegression(hyper="feature_l2")}),
        ("digits", load_digits, "accuracy", {
            "LogisticRegressionCV(Cs=20)": lambda: LogisticRegressionCV(Cs=20, max_iter=5000),
            "HyperLogisticRegression()": lambda: HyperLogisticRegression(),
            "HyperLogisticRegression(hyper='feature_l2')":
                lambda: HyperLogisticRegression(hyper="feature_l2")}),
        ("diabetes", load_diabetes, "R²", {
            "RidgeCV(20 alphas)": lambda: RidgeCV(alphas=np.logspace(-4, 4, 20)),
            "HyperRidge()": lambda: HyperRidge(),
            "HyperRidge(hyper='feature_l2')": lambda: HyperRidge(hyper="feature_l2")}),
    ]
    print("| data | estimator | score (mean ± sd over splits) | fit time (median) |")
    print("|---|---|---|---|")
    for name, load, metric, ests in cases:
        X, y = load(return_X_y=True)
        for label, make in ests.items():
            scores, times = [], []
            for s in range(splits):
                strat = y if metric == "accuracy" else None
                Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=s,
                                                      stratify=strat)
                if s == 0:
                    make_pipeline(StandardScaler(), make()).fit(Xtr, ytr)   # warm-up
                est = make_pipeline(StandardScaler(), make())
                t = time.perf_counter()
                est.fit(Xtr, ytr)
                times.append(time.perf_counter() - t)
                scores.append(est.score(Xte, yte))
            print(f"| {name} ({metric}) | `{label}` | {np.mean(scores):.4f} ± "
                  f"{np.std(scores):.4f} | {np.median(times):.3f} s |", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, default=5)
    main(ap.parse_args().splits)
