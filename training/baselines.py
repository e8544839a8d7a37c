"""Classic baselines on the same split as the network: scikit-learn models, and naive forecasts for series."""

from __future__ import annotations

import warnings

import numpy as np


def _classifiers(seed: int) -> dict:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return {"logistic regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
            "SVC (RBF)": make_pipeline(StandardScaler(), SVC(probability=False)),
            "random forest": RandomForestClassifier(n_estimators=300, random_state=seed)}


def _regressors(seed: int) -> dict:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    return {"ridge": make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))),
            "SVR (RBF)": make_pipeline(StandardScaler(), SVR(C=10.0)),
            "random forest": RandomForestRegressor(n_estimators=300, random_state=seed)}


def naive_forecasts(X: np.ndarray, horizon: int, season: int | None) -> dict[str, np.ndarray]:
    """Last value repeated, and the value one season earlier (when the window reaches back that far)."""
    forecasts = {"last value": np.repeat(X[:, -1:], horizon, axis=1)}
    if season and season <= X.shape[1] and horizon <= season:
        forecasts["seasonal naive"] = X[:, X.shape[1] - season:X.shape[1] - season + horizon]
    return forecasts


def all_baselines(prepared, config) -> dict[str, float]:
    """Every baseline's headline test metric for the run's task (empty when none applies)."""
    task = prepared.task
    X, y = prepared.X, prepared.y
    flat = {part: X[part].reshape(len(X[part]), -1) for part in X}
    results: dict[str, float] = {}
    if task in ("multiclass", "binary"):
        fit_X = np.concatenate([flat["train"], flat["val"]])
        fit_y = np.concatenate([y["train"], y["val"]])
        for name, model in _classifiers(config.seed).items():
            results[name] = float((model.fit(fit_X, fit_y).predict(flat["test"]) == y["test"]).mean())
    elif task == "regression":
        from sklearn.metrics import r2_score

        fit_X = np.concatenate([flat["train"], flat["val"]])
        fit_y = np.concatenate([y["train"], y["val"]])
        for name, model in _regressors(config.seed).items():
            results[name] = float(r2_score(y["test"], model.fit(fit_X, fit_y).predict(flat["test"])))
    elif task == "forecasting":
        for name, pred in naive_forecasts(X["test"], prepared.horizon, prepared.data.season).items():
            results[name] = float(np.abs(pred - y["test"]).mean())
    elif task == "anomaly":
        from sklearn.decomposition import PCA
        from sklearn.metrics import roc_auc_score

        from training.trainer import noisy_copy

        latent = int(config.model.get("latent_dim", 16))
        mean, std = prepared.x_mean.reshape(1, -1), prepared.x_std.reshape(1, -1)
        if flat["train"].shape[1] != mean.shape[1]:  # per-channel image statistics: one value per pixel
            mean, std = flat["train"].mean(0, keepdims=True), flat["train"].std(0, keepdims=True) + 1e-6
        pca = PCA(n_components=latent, random_state=config.seed).fit((flat["train"] - mean) / std)

        def score(A):
            Z = (A - mean) / std
            return ((pca.inverse_transform(pca.transform(Z)) - Z) ** 2).mean(1)

        noisy = noisy_copy(X["test"], float(config.eval.get("noise", 4.0)), config.seed).reshape(len(X["test"]), -1)
        scores = np.concatenate([score(flat["test"]), score(noisy)])
        truth = np.concatenate([np.zeros(len(flat["test"])), np.ones(len(noisy))])
        results[f"PCA ({latent} components)"] = float(roc_auc_score(truth, scores))
    return results


def best_baseline(prepared, config) -> dict | None:
    """The best classic baseline: {"name", "value", "all"}; None where no classic baseline applies."""
    from training.tasks import TASK_SPECS

    with warnings.catch_warnings():  # convergence chatter from scikit-learn on small data
        warnings.simplefilter("ignore")
        results = all_baselines(prepared, config)
    if not results:
        return None
    higher = TASK_SPECS[prepared.task].higher_is_better
    name = (max if higher else min)(results, key=results.get)
    return {"name": name, "value": results[name], "all": results}
