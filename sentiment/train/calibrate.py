"""``sentiment calibrate``: fit a finished bundle's temperature again on the validation split
it was trained with. It rebuilds that split as training made it (data, seed, validation
fraction from the bundle's config.json), so it belongs to the training program."""
from __future__ import annotations

import numpy as np

from .. import data as data_module
from ..errors import SentimentError
from ..metrics import classification_metrics


def calibrate_bundle(model_dir: str, data: str | None = None, cache_dir: str | None = None,
                     allow_other_data: bool = False, balanced: bool | None = None) -> dict:
    """``sentiment calibrate``: fit a bundle's temperature by length on the validation split it was
    trained with (rebuilt from its config: data, seed, validation fraction) and excerpts of it, record it and the
    calibrated metrics in its ``config.json``, and refresh its model card. Weights and
    tokenizer are untouched, so their hashes still hold.

    ``balanced``: also choose class weights for balanced decisions (``calibration.balance``);
    None keeps them when the bundle had them, False drops them.

    The data must have the fingerprint the bundle recorded at training, unless ``allow_other_data``:
    other data would replace its calibration and validation metrics with figures of that data."""
    from .. import calibration
    from ..bundle import CONFIG, load_bundle, read_config, rewrite_config
    from .distributed import Processes
    from ..predict import uncalibrated
    from .recipes import TrainConfig
    from .training import prepare_data

    config = read_config(model_dir)
    training = dict(config.get("training") or {})
    if not training:
        raise SentimentError(f"{model_dir}/{CONFIG}: no 'training' section, so its validation split is unknown")
    if data:
        training["data"] = data
    other_data = _other_data(model_dir, config, training.get("data"), allow_other_data)
    if cache_dir:
        training["cache_dir"] = cache_dir
    training["out"] = None
    train_config = TrainConfig(**training)
    train, validation, test, _ = prepare_data(train_config, Processes())
    clf = load_bundle(model_dir, precision="float32")
    val_labels = np.asarray(validation["label"])
    # Fitted on the network's own logits (temperature 1), whatever the bundle recorded before.
    fitted = calibration.fit(validation["text"], val_labels, uncalibrated(clf.model, clf.encoder), train_config.seed)
    clf.calibration = calibration.Calibration.of(fitted)
    p_val = clf.predict_proba(validation["text"])
    if balanced or (balanced is None and isinstance(config.get("calibration"), dict)
                    and config["calibration"].get("balance") is not None):
        # Chosen on the calibrated probabilities, as the bundle will give them.
        fitted["balance"] = calibration.fit_balance(val_labels, p_val,
                                                    calibration.class_shares(train["label"], len(clf.labels)))
        clf.calibration = calibration.Calibration.of(fitted)
        p_val = clf.calibration.reweigh(p_val)
    metrics = dict(config.get("metrics") or {})
    metrics["validation"] = classification_metrics(val_labels, p_val, clf.labels)
    if test is not None and "test" in metrics:
        metrics["test"] = classification_metrics(np.asarray(test["label"]), clf.predict_proba(test["text"]),
                                                 clf.labels)
    if other_data:
        fitted["other_data"] = other_data  # the record says its figures are not of the training data
    config.update({"metrics": metrics, "calibration": fitted})
    rewrite_config(model_dir, config)
    if fitted["method"] == "none":
        print(f"{model_dir}: no temperature fitted: {fitted['reason']}")
    else:
        print(f"{model_dir}: {calibration.describe(fitted)}")
    if "balance" in fitted:
        print(f"{model_dir}: {calibration.describe_balance(fitted)}")
    return fitted


def _other_data(model_dir: str, config: dict, source, allow: bool) -> dict | None:
    """None when ``source`` is the data the bundle was trained on (same fingerprint); else what it
    is, where ``allow`` says so, or SentimentError naming both."""
    from ..bundle import CONFIG

    recorded, found = config.get("data_fingerprint"), data_module.fingerprint(source)
    if found == recorded:
        return None
    if not allow:
        trained_on = (config.get("training") or {}).get("data")
        was = (f"was trained on {trained_on} (fingerprint {recorded})" if recorded
               else "records no data_fingerprint, so its training data is unknown")
        raise SentimentError(f"{model_dir}/{CONFIG}: the bundle {was}, but {source} has fingerprint {found}; "
                             "calibrating on other data replaces its calibration and validation metrics with "
                             "figures of that data (--allow-other-data does so)")
    return {"data": str(source), "data_fingerprint": found}
