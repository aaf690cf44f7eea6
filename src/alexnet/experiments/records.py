"""Finished runs as small records that live with the code, so that an experiment outlives the machine it ran on.

A run folder holds checkpoints (hundreds of MB) and goes when the machine goes; its record is a few KB of
JSON committed under experiments/records/EXPERIMENT/FOLDER/KEY.json: the run's config, seed, code version,
status, wall time, per-epoch metrics, and the `extras` an experiment derives from the finished run (per-image
hits for a bootstrap, live-unit counts, test-set results). `Runner` treats a run whose record matches the
spec as done, so an experiment started on one machine continues on another, and people who share a
repository share its finished runs.

A record matches a spec when their configs are equal, with two allowances: `data.store` is compared by the
store folder's name, not its path (the same prepared store sits in a different home on every machine), and a
key added to the config after the record was written matches at its default (what the record's run used).
Anything else that differs (epochs, a learning rate, threads, precision) makes the record stale: the run is
trained again and its new record replaces the old one.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from alexnet.config import Config, config_to_dict
from alexnet.fsutil import write_json

FORMAT = "alexnet-run-record-1"


def comparable_config(config: Config | dict) -> dict:
    """The config as a record compares it: data.store reduced to the store folder's name."""
    d = json.loads(json.dumps(config if isinstance(config, dict) else config_to_dict(config)))
    store = d.get("data", {}).get("store")
    if store:
        d["data"]["store"] = Path(str(store)).name
    return d


def record_path(folder: Path, key: str) -> Path:
    return Path(folder) / f"{key}.json"


def read_record(folder: Path | None, key: str, config: Config) -> dict | None:
    """The record of run `key` if there is one and it was made with `config` (see the module docstring)."""
    if folder is None:
        return None
    path = record_path(folder, key)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a run record ({err}); delete it to train the run again") from err
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: format {record.get('format')!r}, expected {FORMAT!r}")
    return record if configs_match(record["config"], comparable_config(config)) else None


def configs_match(recorded: dict, wanted: dict) -> bool:
    """Whether a record's config is the one wanted. A key the record lacks (added to the config after the
    record was written) matches only at its default, the value every config without it ran with."""
    defaults = comparable_config(Config())
    for section, values in wanted.items():
        for key, value in values.items():
            have = recorded.get(section, {})
            if key in have:
                if have[key] != value:
                    return False
            elif value != defaults.get(section, {}).get(key):
                return False
    return all(key in wanted.get(section, {}) for section, values in recorded.items() for key in values)


def write_record(folder: Path, key: str, fields: dict[str, Any], config: Config) -> Path:
    """Write (atomically) the record of run `key`: `fields` (outcome, metrics, extras, code version) and its
    comparable config."""
    path = record_path(folder, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"format": FORMAT, "key": key, "config": comparable_config(config), **fields}, indent=1)
    return path


def pack_bits(values: np.ndarray) -> dict:
    """A boolean vector as JSON: its length and its bits packed and base64-encoded (per-image hits of a
    3,925-image validation split take 656 characters)."""
    values = np.asarray(values, dtype=bool)
    return {"n": int(values.size), "bits": base64.b64encode(np.packbits(values).tobytes()).decode("ascii")}


def unpack_bits(packed: dict) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(raw)[: packed["n"]].astype(bool)
