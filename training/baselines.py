"""Classic baselines on the same split as the network: scikit-learn models, and naive forecasts for series.

Each task (training.tasks) says which of these it is compared with."""

from __future__ import annotations

import warnings

import numpy as np

from training.predict import noisy_copy


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


def _fit_rows(prepared) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Flat features per split, and the training and validation rows together (the baselines fit on both)."""
    X, y = prepared.X, prepared.y
    flat = {part: X[part].reshape(len(X[part]), -1) for part in X}
    return flat, np.concatenate([flat["train"], flat["val"]]), np.concatenate([y["train"], y["val"]])


def classifier_baselines(prepared, config) -> dict[str, float]:
    """Test accuracy of each classic classifier."""
    flat, fit_X, fit_y = _fit_rows(prepared)
    return {name: float((model.fit(fit_X, fit_y).predict(flat["test"]) == prepared.y["test"]).mean())
            for name, model in _classifiers(config.seed).items()}


def regressor_baselines(prepared, config) -> dict[str, float]:
    """Test R^2 of each classic regressor."""
    from sklearn.metrics import r2_score

    flat, fit_X, fit_y = _fit_rows(prepared)
    return {name: float(r2_score(prepared.y["test"], model.fit(fit_X, fit_y).predict(flat["test"])))
            for name, model in _regressors(config.seed).items()}


def forecast_baselines(prepared) -> dict[str, float]:
    """Test MAE of each naive forecast."""
    forecasts = naive_forecasts(prepared.X["test"], prepared.horizon, prepared.data.season)
    return {name: float(np.abs(pred - prepared.y["test"]).mean()) for name, pred in forecasts.items()}


def anomaly_baselines(prepared, config) -> dict[str, float]:
    """ROC AUC of PCA reconstruction errors, clean test samples against the same noisy copies as the network's."""
    from sklearn.decomposition import PCA
    from sklearn.metrics import roc_auc_score

    X = prepared.X
    flat = {part: X[part].reshape(len(X[part]), -1) for part in X}
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
    return {f"PCA ({latent} components)": float(roc_auc_score(truth, scores))}


def best_baseline(task, prepared, config) -> dict | None:
    """The best classic baseline of `task` (a training.tasks.Task): {"name", "value", "all"}; None where no classic
    baseline applies."""
    with warnings.catch_warnings():  # convergence chatter from scikit-learn on small data
        warnings.simplefilter("ignore")
        results = task.baselines(prepared, config)
    if not results:
        return None
    name = (max if task.higher_is_better else min)(results, key=results.get)
    return {"name": name, "value": results[name], "all": results}
