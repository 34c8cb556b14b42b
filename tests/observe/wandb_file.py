"""Reads an offline W&B run file (`run-<id>.wandb`): a 7-byte header (":W&B", a 2-byte key,
a version byte), then LevelDB log records (32 KiB blocks; a 7-byte header per fragment:
crc32, little-endian length, type FULL/FIRST/MIDDLE/LAST) holding `Record` protobufs."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, out, parts = 7, [], b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            parts = chunk
        elif kind == FIRST:
            parts = chunk
            continue
        elif kind == MIDDLE:
            parts += chunk
            continue
        elif kind == LAST:
            parts += chunk
        rec = pb.Record()
        rec.ParseFromString(parts)
        out.append(rec)
    return out


def history_and_config(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each logged step as {key: value}, and the run's config."""
    steps, config = [], {}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            steps.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                          for i in rec.history.item})
        elif kind in ("config", "run"):
            updates = rec.config.update if kind == "config" else rec.run.config.update
            for i in updates:
                config[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return steps, config
