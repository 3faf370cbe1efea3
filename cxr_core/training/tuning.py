"""``--tune``: keras-tuner random search over the head and fine-tuning depth, as the study did.

keras-tuner needs ``tensorboard`` installed (every trial fails without it). The best trial's model
is kept and goes on through :func:`cxr_core.training.train.train` like an untuned one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from cxr_core.models.zoo import ALL_LAYERS, trainable_layers
from cxr_core.training.dataset import class_weights
from cxr_core.training.train import TrainConfig, build_for_training, callbacks, make_dataset, mirrored_strategy

#: The search space of ``--tune`` (the study tuned hidden units, activation, learning rate, trainable layers).
TUNE_SPACE = {
    "hidden_units": [64, 128, 256, 512],
    "activation": ["relu", "elu", "tanh"],
    "lr": (1e-5, 1e-2),
    "trainable_layers": ["0", "10", "20", "40", ALL_LAYERS],  # text, as --trainable-layers takes it
}


def tune(config: TrainConfig, classes: Sequence[str], data: dict, log: Callable[[str], None] = print,
         directory: Path | str | None = None):
    """keras-tuner RandomSearch over :data:`TUNE_SPACE` for ``config.tune_trials`` trials; keeps the best.

    Returns ``(model, history, best)``: the best trial's model with its weights, the best trial's
    history and ``{"hyperparameters": ..., "val_loss": ..., "trials": n}``.
    """
    import tempfile

    import keras
    import keras_tuner as kt

    keras.utils.set_random_seed(config.seed)

    def hypermodel(hp):
        units = hp.Choice("hidden_units", TUNE_SPACE["hidden_units"])
        activation = hp.Choice("activation", TUNE_SPACE["activation"])
        lr = hp.Float("lr", *TUNE_SPACE["lr"], sampling="log")
        layers = hp.Choice("trainable_layers", TUNE_SPACE["trainable_layers"])
        trial = TrainConfig(**{**asdict(config), "hidden_units": (units,), "activation": activation})
        return build_for_training(trial, classes, trial.spec(), lr=lr, trainable_layers=trainable_layers(layers))

    workdir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="cxr-tune-"))
    tuner = kt.RandomSearch(hypermodel, objective="val_loss", max_trials=config.tune_trials, seed=config.seed,
                            directory=str(workdir), project_name=config.name, overwrite=True,
                            distribution_strategy=mirrored_strategy())
    x_train, y_train = data["train"]
    tuner.search(make_dataset(x_train, y_train, config, training=True),
                 validation_data=make_dataset(*data["val"], config, training=False), epochs=config.epochs,
                 class_weight=class_weights(y_train, len(classes)), callbacks=callbacks(config, log),
                 verbose=1 if config.progress else 0)
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best_hp = dict(best_trial.hyperparameters.values)
    model = tuner.get_best_models(1)[0]
    # keras-tuner records each epoch's metrics per trial; the best trial's become the card's history.
    history = {name: [float(obs.value[0]) for obs in best_trial.metrics.get_history(name)]
               for name in best_trial.metrics.metrics}
    log(f"tuning: best of {len(tuner.oracle.trials)} trials {best_hp} (val_loss {best_trial.score:.4f})")
    return model, history, {"hyperparameters": best_hp, "val_loss": float(best_trial.score),
                            "trials": len(tuner.oracle.trials), "space": {k: list(v) for k, v in TUNE_SPACE.items()}}
