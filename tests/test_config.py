"""Typed config: presets, overrides, errors that list the valid keys, TOML round trip."""

from dataclasses import replace

import pytest

from alexnet.config import Config, config_from_dict, config_to_dict, list_presets, load_config, save_config, to_toml
from alexnet.resume import adopt_unset_keys, upgrade_v1_config


def test_defaults_are_the_papers():
    c = Config()
    assert (c.optim.kind, c.optim.lr, c.optim.momentum, c.optim.weight_decay) == ("paper", 0.01, 0.9, 0.0005)
    assert (c.data.batch_size, c.data.crop, c.data.lighting_std, c.data.input_scale) == (128, 224, 0.1, 1.0)
    assert (c.schedule.kind, c.schedule.factor, c.schedule.max_drops) == ("plateau", 0.1, 3)
    assert (c.run.epochs, c.run.precision, c.model.init, c.model.dropout) == (90, "fp32", "paper", 0.5)
    # the preset names the code's choices the printed paper leaves open; "auto" means the same for alexnet
    model = replace(c.model, dropout_form="paper", lrn_alpha="over-n")
    assert load_config("paper") == Config(model=model, optim=replace(c.optim, decay_biases=False),
                                          data=c.data, schedule=c.schedule)


def test_every_preset_decays_weights_only():
    """cuda-convnet's weight decay touches weights, not biases; a config without the key decays both."""
    assert all(not load_config(name).optim.decay_biases for name in list_presets())
    assert Config().optim.decay_biases and Config().optim.bias_lr_scale == 1.0


def test_a_version_1_config_reads_as_that_version_computed():
    old = config_to_dict(Config())
    for key in ("dropout_form", "lrn_alpha"):
        del old["model"][key]
    del old["optim"]["decay_biases"], old["optim"]["bias_lr_scale"]
    c = config_from_dict(upgrade_v1_config(old))
    assert (c.model.dropout_form, c.model.lrn_alpha, c.optim.decay_biases) == ("inverted", "printed", True)
    caffe = upgrade_v1_config({**old, "model": {**old["model"], "name": "alexnet_caffe"}})
    assert caffe["model"]["lrn_alpha"] == "auto"  # its constants held alpha / n already
    # a run folder's config.toml from then lacks the keys: resuming takes them from the checkpoint
    resumed = adopt_unset_keys(c, load_config(None, ["model.init=kaiming"]))
    assert (resumed.model.dropout_form, resumed.model.lrn_alpha, resumed.model.init) == ("inverted", "printed",
                                                                                         "kaiming")
    # set explicitly, a key is kept (and the resume check then names the conflict)
    assert adopt_unset_keys(c, load_config("paper")).model.dropout_form == "paper"


def test_presets_load():
    assert {"paper", "demo", "cifar10"} <= set(list_presets())
    for name in list_presets():
        load_config(name)


def test_overrides_are_typed():
    c = load_config(
        "paper",
        [
            "run.epochs=3",
            "optim.lr=1",
            "data.in_memory=true",
            "schedule.milestones=[5, 9]",
            "data.store=/tmp/x y",
            "run.precision=bf16",
        ],
    )
    assert c.run.epochs == 3 and c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
    assert c.data.in_memory is True and c.schedule.milestones == (5, 9)
    assert c.data.store == "/tmp/x y" and c.run.precision == "bf16"


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ValueError, match=r"unknown key optim\.lrate.*valid keys.*\blr\b.*momentum"):
        load_config("paper", ["optim.lrate=0.1"])
    with pytest.raises(ValueError, match=r"unknown key run\.epoch\b.*epochs"):
        config_from_dict({"run": {"epoch": 3}}, "my.toml")
    with pytest.raises(
        ValueError, match=r"unknown section.*valid sections: model, data, optim, schedule, run"
    ):
        config_from_dict({"training": {}})


def test_wrong_type_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"run\.epochs = 'ten' has the wrong type: expected int"):
        load_config("paper", ["run.epochs='ten'"])
    with pytest.raises(ValueError, match=r"data\.in_memory = 1 has the wrong type: expected bool"):
        load_config("paper", ["data.in_memory=1"])
    bad = tmp_path / "bad.toml"
    bad.write_text('[optim]\nlr = "fast"\n')
    with pytest.raises(ValueError, match=r"bad\.toml: optim\.lr = 'fast' has the wrong type: expected float"):
        load_config(bad)


def test_bad_values_are_errors():
    with pytest.raises(ValueError, match="optim.kind = 'adam' is not one of 'paper', 'sgd'"):
        load_config(None, ["optim.kind=adam"])
    with pytest.raises(ValueError, match="run.epochs = 0"):
        load_config(None, ["run.epochs=0"])
    with pytest.raises(ValueError, match="not section.key=value"):
        load_config(None, ["epochs=3"])
    with pytest.raises(FileNotFoundError, match="neither a file nor a preset; presets: cifar10, demo, paper"):
        load_config("nonsense")


def test_saved_config_reads_back_equal(tmp_path):
    c = load_config("demo", ['data.store=odd "name"', "schedule.milestones=[3]", "optim.lr=0.125"])
    save_config(c, tmp_path / "config.toml")
    assert load_config(tmp_path / "config.toml") == c


def test_save_config_is_atomic(tmp_path, monkeypatch):
    """A write that fails before it is complete leaves the old config.toml whole and no temporary file."""
    import alexnet.fsutil

    path = tmp_path / "config.toml"
    old = load_config("paper")
    save_config(old, path)

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(alexnet.fsutil.os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        save_config(load_config("demo"), path)
    monkeypatch.undo()
    assert load_config(path) == old and [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_input_size_and_crop_must_agree_and_the_error_names_both():
    with pytest.raises(ValueError, match=r"model.input_size = 224 but data.crop = 32.*--set model.input_size=32"):
        load_config(None, ["data.crop=32"])
    assert load_config(None, ["data.crop=227", "model.input_size=227"]).model.input_size == 227


def test_num_classes_comes_from_the_data_unless_set():
    config = load_config("paper")
    assert config.model.num_classes is None  # a shipped preset does not fix it
    assert config.with_num_classes(10, "store S").model.num_classes == 10
    mine = load_config("paper", ["model.num_classes=1000"])
    with pytest.raises(ValueError, match=r"model.num_classes = 1000 but store S has 10 classes"):
        mine.with_num_classes(10, "store S")
    assert "num_classes" not in to_toml(config) and "num_classes = 10" in to_toml(config.with_num_classes(10, "s"))
