"""What a resumed run must keep from its checkpoint, and how a config of checkpoint format 1 reads today.

Torch-free, like `alexnet.config`: the checks run before anything heavy is loaded.
"""

from __future__ import annotations

import dataclasses

from alexnet.config import Config, ModelConfig

# What fixes the batches of a run (their order, or the content of each), or the network: changing one of
# these on resume would continue a different run than the checkpoint's. run.epochs and the budgets may change.
RESUME_FIXED = (
    "model.name",
    "model.num_classes",
    "model.input_size",
    "model.init",
    "model.dropout",
    "model.dropout_form",
    "model.lrn_alpha",
    "optim.decay_biases",
    "optim.bias_lr_scale",
    "data.store",
    "run.seed",
    "run.model_parallel",
    "data.batch_size",
    "data.batch_is_global",
    "data.crop",
    "data.random_crop",
    "data.flip",
    "data.lighting_std",
    "data.normalize",
    "data.input_scale",
)


# Keys a config of checkpoint format 1 (and an export written then) did not have, with the values that
# reproduce what that version computed: inverted dropout, biases decayed, and alpha undivided except in
# the models whose constants already held alpha / n (Caffe's, cuda-convnet's conv-local files).
_ALPHA_DIVIDED_BEFORE_V2 = ("alexnet_caffe", "cifar_convlocal", "cifar_convlocal_lrn")


def _format_1_values(model_name: str) -> dict[str, object]:
    """The value in format 1 of every key format 2 added, by "section.key"."""
    return {
        "model.dropout_form": "inverted",
        "model.lrn_alpha": "auto" if model_name in _ALPHA_DIVIDED_BEFORE_V2 else "printed",
        "optim.decay_biases": True,
        "optim.bias_lr_scale": 1.0,
    }


def upgrade_v1_config(data: dict) -> dict:
    """A config dict as format 1 saved it -> the same run in today's keys (new keys set to the old
    behaviour; keys it has are kept)."""
    out = {**data, "model": dict(data.get("model", {})), "optim": dict(data.get("optim", {}))}
    for dotted, value in _format_1_values(out["model"].get("name", ModelConfig.name)).items():
        section, key = dotted.split(".")
        out[section].setdefault(key, value)
    return out


def adopt_unset_keys(saved: Config, config: Config) -> Config:
    """`config` with the keys format 2 added taken from `saved` wherever `config` leaves them at their
    defaults: a run folder's config.toml written before those keys existed lacks them, and resuming
    with it must continue the run as it was trained."""
    defaults = Config()
    changes: dict[str, dict] = {}
    for dotted in _format_1_values(saved.model.name):
        section, key = dotted.split(".")
        if get_value(config, dotted) == get_value(defaults, dotted):
            changes.setdefault(section, {})[key] = get_value(saved, dotted)
    return dataclasses.replace(config, **{
        section: dataclasses.replace(getattr(config, section), **values) for section, values in changes.items()
    })


def get_value(config: Config, dotted: str) -> object:
    """`config.section.key` for "section.key"."""
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def resume_conflicts(saved: Config, config: Config) -> list[str]:
    """The RESUME_FIXED values `config` changes from `saved`, as "key = new (was old)" lines."""
    return [
        f"{key} = {get_value(config, key)!r} (was {get_value(saved, key)!r})"
        for key in RESUME_FIXED
        if get_value(config, key) != get_value(saved, key)
    ]
