"""TFDS through ``tfds.data_source`` (array_record files, no TensorFlow) as a pretraining source."""

import lzma

import tensorflow_datasets as tfds

from bertjax.data.sources import corpus_files, read_documents
from bertjax.train.pretrain import pretrain

from pretrain_helpers import config, train_losses


def _docs(n_docs=6, paragraphs=60):
  lines = [l for l in lzma.open(corpus_files()[0], "rt", encoding="utf-8").read().splitlines()
           if l.strip()]
  return ["\n".join(lines[i * paragraphs:(i + 1) * paragraphs]) for i in range(n_docs)]


class BertjaxToyBooks(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    # (DatasetInfo directly: dataset_info_from_configs looks for metadata files in a package)
    return tfds.core.DatasetInfo(builder=self,
                                 features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, doc in enumerate(_docs()):
      yield i, {"text": doc}


def test_tfds_data_source_feeds_pretraining(tmp_path):
  data_dir = tmp_path / "tfds"
  BertjaxToyBooks(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  docs = read_documents("tfds:bertjax_toy_books", tfds_data_dir=str(data_dir))
  assert len(docs) == 6 and all(len(d) == 60 for d in docs)
  assert sorted(d[0] for d in docs) == sorted(t.split("\n")[0] for t in _docs())
  run = tmp_path / "run"
  result = pretrain(config(run, "tfds:bertjax_toy_books", "train.steps=3",
                           f"data.tfds_data_dir={data_dir}"), quiet=True)
  assert result["step"] == 3 and len(train_losses(run)) == 3


class BertjaxToyReviews(tfds.core.GeneratorBasedBuilder):
  """A labeled TFDS dataset with a ClassLabel feature (ids on disk, names in the info)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "sentence": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=["negative", "positive"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0), "validation": self._generate_examples(1)}

  def _generate_examples(self, split):
    for i in range(6):
      yield i, {"sentence": f"review {split} {i} is {'good' if i % 2 else 'bad'}",
                "label": i % 2}


def test_tfds_labeled_split_for_fine_tuning(tmp_path):
  from bertjax.config import TaskDataConfig
  from bertjax.tasks.formats import infer_labels, read_split
  from bertjax.tasks.types import task_type

  data_dir = tmp_path / "tfds"
  BertjaxToyReviews(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  cfg = TaskDataConfig(format="tfds", tfds_name="bertjax_toy_reviews",
                       tfds_data_dir=str(data_dir), train="train", validation="validation",
                       text_field="sentence")
  rows = read_split("validation", task_type("classification"), cfg)
  assert len(rows) == 6
  by_text = {r["text"]: r["label"] for r in rows}
  assert by_text["review 1 3 is good"] == "positive" and by_text["review 1 2 is bad"] == "negative"
  classification = task_type("classification")
  assert infer_labels(read_split("train", classification, cfg), classification) == (
      "negative", "positive")
