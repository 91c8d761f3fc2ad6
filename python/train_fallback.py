#!/usr/bin/env python3
"""Train the non-neural fallback (kNN, linear SVM, random forest) on a head's features.

PULP style (Tabanelli et al., ACM TECS 2023): classic classifiers on features the
device computes anyway, run in Rust (models/src/classic/) with the same predictions
as scikit-learn. The features come from our Rust model, never from PyTorch:

    splitstream features --weights assets/demo/demo_vit_bottlefit.safetensors --at 1 \\
        --pool mean --images TRAIN_DIR --out train_x.npy --labels-out train_y.npy
    splitstream features ... --images assets/demo/test --out test_x.npy --labels-out test_y.npy
    python python/train_fallback.py --train train_x.npy train_y.npy \\
        --test test_x.npy test_y.npy --model demo_vit_bottlefit --split 1 --pool mean \\
        --class-names-from assets/demo/demo_vit_bottlefit.safetensors \\
        --out assets/demo/fallback --fixture models/tests/data/classic_fixture.safetensors

(TRAIN_DIR: PNGs and labels.csv of the training crops, from
`python/make_demo_dataset.py --calibration N`; docs/fallback.md has the whole recipe.)

Writes OUT/{knn,linear_svc,random_forest}.safetensors: the parameters as tensors,
metadata `format` = splitstream-classic/1, `kind`, `classes` (scikit-learn's
`classes_`), `class_names`, `hyperparameters`, `features` (model, split, pool) and
`n_features`; and OUT/summary.json with the cross-validated choices and test accuracy.
--fixture writes the test features with scikit-learn's predictions, scores and
probabilities, for the Rust parity test (tests need neither Python nor scikit-learn).

Choices made for exact parity (see models/src/classic/mod.rs):
- kNN with metric="l2", algorithm="brute": scikit-learn's `ArgKminClassMode` sums
  squared differences in float64 in order; "euclidean" would go through a GEMM whose
  rounding is BLAS's.
- kNN and SVM take float64 features through a StandardScaler (float64 arithmetic,
  reproducible); the forest takes the raw float32 features (trees cast X to float32).
- The forest predicts with n_jobs=1, so its per-tree probabilities are summed in tree
  order (with several jobs the order is the threads').
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
import sklearn

FORMAT = "splitstream-classic/1"


def class_names_of(path: Path | None) -> list[str] | None:
    """The `class_names` metadata of a safetensors file, read from its header."""
    if path is None:
        return None
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    names = header.get("__metadata__", {}).get("class_names")
    return json.loads(names) if names else None


def metadata(kind, classes, names, hyper, features, n_features) -> dict[str, str]:
    meta = {
        "format": FORMAT,
        "kind": kind,
        "classes": json.dumps([int(c) for c in classes]),
        "hyperparameters": json.dumps(hyper, sort_keys=True),
        "features": json.dumps(features, sort_keys=True),
        "n_features": str(n_features),
        "sklearn_version": sklearn.__version__,
    }
    if names:
        meta["class_names"] = json.dumps(names, ensure_ascii=False)
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs=2, type=Path, required=True, metavar=("X", "Y"))
    parser.add_argument("--test", nargs=2, type=Path, required=True, metavar=("X", "Y"))
    parser.add_argument("--model", required=True, help="the network the features come from (a name)")
    parser.add_argument("--split", type=int, required=True, help="its split point")
    parser.add_argument("--pool", required=True, choices=["mean", "cls", "mean_cls"])
    parser.add_argument("--class-names-from", type=Path, help="a safetensors file with class_names metadata")
    parser.add_argument("--out", type=Path, help="folder for the three models and summary.json")
    parser.add_argument("--fixture", type=Path, help="write the parity fixture here")
    parser.add_argument("--fixture-samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--max-depth", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2, help="cores for fitting and the search")
    args = parser.parse_args()

    x_train = np.load(args.train[0]).astype(np.float32)
    y_train = np.load(args.train[1]).astype(np.int64)
    x_test = np.load(args.test[0]).astype(np.float32)
    y_test = np.load(args.test[1]).astype(np.int64)
    assert x_train.ndim == 2 and x_train.shape[1] == x_test.shape[1], "feature widths differ"
    d = x_train.shape[1]
    names = class_names_of(args.class_names_from)
    features = {"model": args.model, "split": args.split, "pool": args.pool}
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=args.seed)

    # float64 copies (exact upcasts of the float32 features) for the scaled models.
    scaler = StandardScaler().fit(x_train.astype(np.float64))
    z_train = scaler.transform(x_train.astype(np.float64))
    z_test = scaler.transform(x_test.astype(np.float64))
    scaler_tensors = {"scaler.mean": scaler.mean_.astype(np.float64), "scaler.scale": scaler.scale_.astype(np.float64)}

    summary = {"features": features, "n_features": d, "train": len(y_train), "test": len(y_test),
               "sklearn": sklearn.__version__, "models": {}}
    fixture = {}
    n_fix = min(args.fixture_samples, len(y_test))
    fixture["x"] = np.ascontiguousarray(x_test[:n_fix])
    fixture["y"] = y_test[:n_fix]

    # kNN.
    t = time.time()
    knn_search = GridSearchCV(
        KNeighborsClassifier(metric="l2", algorithm="brute", weights="uniform"),
        {"n_neighbors": [1, 3, 5, 7, 9, 15]}, cv=cv, n_jobs=args.jobs,
    ).fit(z_train, y_train)
    knn = knn_search.best_estimator_
    k = int(knn.n_neighbors)
    knn_pred = knn.predict(z_test)
    hyper = {"n_neighbors": k, "metric": "l2", "algorithm": "brute", "weights": "uniform", "scaler": "standard"}
    summary["models"]["knn"] = {"hyperparameters": hyper, "cv_accuracy": knn_search.best_score_,
                                "test_accuracy": float((knn_pred == y_test).mean()), "fit_s": time.time() - t}
    # The training set as the loader wants it: the raw float32 points (half the bytes of
    # the scaled float64 ones) and class indices; the loader scales the points in float64
    # as StandardScaler.transform did, which gives scikit-learn's `_fit_X` exactly.
    y_index = np.searchsorted(knn.classes_, y_train).astype(np.int64)
    knn_tensors = {"knn.x": np.ascontiguousarray(x_train), "knn.y": y_index, **scaler_tensors}
    fixture["knn.pred"] = knn.predict(np.ascontiguousarray(z_test[:n_fix])).astype(np.int64)
    fixture["knn.proba"] = knn.predict_proba(np.ascontiguousarray(z_test[:n_fix])).astype(np.float64)
    assert np.array_equal(scaler.transform(knn_tensors["knn.x"].astype(np.float64)), knn._fit_X)

    # Linear SVM (one-vs-rest).
    t = time.time()
    svc_search = GridSearchCV(
        LinearSVC(dual="auto", max_iter=20000, random_state=args.seed),
        {"C": [0.01, 0.1, 1.0, 10.0]}, cv=cv, n_jobs=args.jobs,
    ).fit(z_train, y_train)
    svc = svc_search.best_estimator_
    svc_pred = svc.predict(z_test)
    hyper = {"C": float(svc.C), "loss": svc.loss, "penalty": svc.penalty, "multi_class": "ovr", "scaler": "standard"}
    summary["models"]["linear_svc"] = {"hyperparameters": hyper, "cv_accuracy": svc_search.best_score_,
                                       "test_accuracy": float((svc_pred == y_test).mean()), "fit_s": time.time() - t}
    svc_tensors = {"svc.coef": svc.coef_.astype(np.float64), "svc.intercept": svc.intercept_.astype(np.float64),
                   **scaler_tensors}
    fixture["linear_svc.pred"] = svc.predict(z_test[:n_fix]).astype(np.int64)
    fixture["linear_svc.decision"] = svc.decision_function(z_test[:n_fix]).astype(np.float64)

    # Random forest on the raw features.
    t = time.time()
    forest = RandomForestClassifier(n_estimators=args.trees, max_depth=args.max_depth,
                                    random_state=args.seed, n_jobs=args.jobs).fit(x_train, y_train)
    forest.set_params(n_jobs=1)  # predictions summed in tree order (see the docstring)
    forest_pred = forest.predict(x_test)
    hyper = {"n_estimators": args.trees, "max_depth": args.max_depth, "criterion": forest.criterion,
             "max_features": forest.max_features, "random_state": args.seed}
    summary["models"]["random_forest"] = {"hyperparameters": hyper,
                                          "test_accuracy": float((forest_pred == y_test).mean()),
                                          "fit_s": time.time() - t}
    offsets, left, right, feat, thr, value = [0], [], [], [], [], []
    for est in forest.estimators_:
        tree = est.tree_
        assert tree.n_outputs == 1
        left.append(tree.children_left.astype(np.int64))
        right.append(tree.children_right.astype(np.int64))
        feat.append(np.where(tree.children_left == -1, 0, tree.feature).astype(np.int64))
        thr.append(np.where(tree.children_left == -1, 0.0, tree.threshold).astype(np.float64))
        # What DecisionTreeClassifier.predict_proba returns for a sample in each node.
        value.append(np.ascontiguousarray(tree.value[:, 0, : forest.n_classes_]).astype(np.float64))
        offsets.append(offsets[-1] + tree.node_count)
    forest_tensors = {
        "forest.offsets": np.array(offsets, dtype=np.int64),
        "forest.left": np.concatenate(left), "forest.right": np.concatenate(right),
        "forest.feature": np.concatenate(feat), "forest.threshold": np.concatenate(thr),
        "forest.value": np.concatenate(value),
    }
    summary["models"]["random_forest"]["nodes"] = int(offsets[-1])
    fixture["random_forest.pred"] = forest.predict(x_test[:n_fix]).astype(np.int64)
    fixture["random_forest.proba"] = forest.predict_proba(x_test[:n_fix]).astype(np.float64)

    for kind, model in [("knn", knn), ("linear_svc", svc), ("random_forest", forest)]:
        assert np.array_equal(model.classes_, np.arange(len(model.classes_))), "labels must be 0..C-1"

    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for kind, tensors, model in [("knn", knn_tensors, knn), ("linear_svc", svc_tensors, svc),
                                     ("random_forest", forest_tensors, forest)]:
            meta = metadata(kind, model.classes_, names, summary["models"][kind]["hyperparameters"], features, d)
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, args.out / f"{kind}.safetensors", metadata=meta)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.fixture:
        args.fixture.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in fixture.items()}, args.fixture,
                  metadata={"sklearn_version": sklearn.__version__, "features": json.dumps(features)})


if __name__ == "__main__":
    main()
