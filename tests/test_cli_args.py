"""Every subcommand takes its options, its preset and its key=value overrides in any order, as
people type them (argparse alone stops reading a ``nargs="*"`` positional at the first option)."""

import pytest

from bertjax.cli import main, parse_args

FORMS = [  # (argv, the attribute holding the words, what it must hold, options to check)
    (["compile", "bert-demo", "--topology", "v5e-4", "--slices", "2", "mesh.fsdp=2"], "args",
     ["bert-demo", "mesh.fsdp=2"], {"topology": "v5e-4", "slices": 2}),
    (["compile", "bert-large-pretrain", "--topology", "v5e-4", "train.batch_size=256",
      "data.max_seq_length=512", "--json", "r.json"], "args",
     ["bert-large-pretrain", "train.batch_size=256", "data.max_seq_length=512"], {"json": "r.json"}),
    (["pretrain", "bert-demo", "--allow-config-change", "train.steps=3"], "args",
     ["bert-demo", "train.steps=3"], {"allow_config_change": True}),
    (["pretrain", "--distributed", "train.steps=3", "mesh.fsdp=2"], "args",
     ["train.steps=3", "mesh.fsdp=2"], {"distributed": True}),
    (["finetune", "rt-polarity", "--allow-config-change", "init_from=m", "train.epochs=1"],
     "overrides", ["init_from=m", "train.epochs=1"], {"task": "rt-polarity"}),
    (["evaluate", "run", "dev.jsonl", "--batch-size", "8", "data.max_seq_length=64"], "overrides",
     ["data.max_seq_length=64"], {"batch_size": 8}),
    (["predict", "run", "dev.jsonl", "--output", "p.jsonl", "data.max_seq_length=64", "--task",
      "rt-polarity"], "overrides", ["data.max_seq_length=64"], {"output": "p.jsonl",
                                                                  "task": "rt-polarity"}),
    (["prepare-data", "bert-demo", "--out", "prep", "data.max_seq_length=64", "--shards", "2"],
     "args", ["bert-demo", "data.max_seq_length=64"], {"out": "prep", "shards": 2}),
    (["embed", "m", "a sentence", "--pooling", "cls", "another one"], "text",
     ["a sentence", "another one"], {"pooling": "cls"}),
]


@pytest.mark.parametrize("argv,field,words,options", FORMS,
                         ids=[f"{f[0][0]}-{i}" for i, f in enumerate(FORMS)])
def test_options_and_overrides_in_any_order(argv, field, words, options):
  args = parse_args(argv)
  assert getattr(args, field) == words
  assert {k: getattr(args, k) for k in options} == options


def test_an_unknown_option_is_still_a_usage_error(capsys):
  assert main(["compile", "bert-demo", "--topology", "v5e-4", "--bogus", "mesh.fsdp=2"]) == 2
  assert "--bogus" in capsys.readouterr().err
