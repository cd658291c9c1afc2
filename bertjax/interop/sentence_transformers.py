"""sentence-transformers folders: a transformers folder plus ``modules.json`` naming the modules
(Transformer -> Pooling [-> Normalize]) with their settings (``1_Pooling/config.json``,
``sentence_bert_config.json``). Read on import (the pooling and normalisation go into the
model's config: ``sentence_pooling`` / ``sentence_normalize``); written on export of a model
that has them, so ``SentenceTransformer(folder)`` embeds as ``bertjax embed`` does."""

from __future__ import annotations

import json
from pathlib import Path

from bertjax import storage

POOLING_MODES = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}


def read_modules(src: Path) -> dict | None:
  """{"sentence_pooling", "sentence_normalize"} of a sentence-transformers folder; None for a
  plain transformers folder, or one whose pooling bertjax does not have (max, weighted ...)."""
  modules_file = src / "modules.json"
  if not modules_file.exists():
    return None
  try:
    modules = json.loads(modules_file.read_text())
  except json.JSONDecodeError:
    return None
  kinds = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
  pooling = kinds.get("Pooling")
  if pooling is None or not (src / pooling.get("path", "") / "config.json").exists():
    return None
  settings = json.loads((src / pooling["path"] / "config.json").read_text())
  chosen = [name for name, key in POOLING_MODES.items() if settings.get(key)]
  others = [k for k, v in settings.items() if k.startswith("pooling_mode_") and v
            and k not in POOLING_MODES.values()]
  if len(chosen) != 1 or others:
    return None
  return {"sentence_pooling": chosen[0], "sentence_normalize": "Normalize" in kinds}


def write_modules(dst, hidden_size: int, pooling: str, normalize: bool, max_seq_length: int) -> None:
  """modules.json, 1_Pooling/config.json, sentence_bert_config.json [and 2_Normalize/]."""
  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"}]
  if normalize:
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
  pooling_config = {"word_embedding_dimension": hidden_size,
                    **{key: name == pooling for name, key in POOLING_MODES.items()},
                    "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
  dst = storage.as_path(dst)
  if not storage.is_url(dst):
    for folder in ("1_Pooling", "2_Normalize") if normalize else ("1_Pooling",):
      (dst / folder).mkdir(parents=True, exist_ok=True)
  storage.write_text(dst / "1_Pooling" / "config.json", json.dumps(pooling_config, indent=2) + "\n")
  if normalize:  # the module has no settings; sentence-transformers wants the folder
    storage.write_text(dst / "2_Normalize" / ".keep", "")
  storage.write_text(dst / "sentence_bert_config.json",
                     json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}) + "\n")
  storage.write_text(dst / "modules.json", json.dumps(modules, indent=2) + "\n")
