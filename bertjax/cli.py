"""``bertjax`` command line: thin parsing over the library. Errors are one line, exit code 2."""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
import warnings
from pathlib import Path

from bertjax.errors import EXIT_PREEMPTED


def _import_hf(args) -> None:
  from bertjax import storage
  from bertjax.interop import import_hf

  cfg = import_hf(args.src, args.dst, overwrite=args.overwrite)
  print(json.dumps({"checkpoint": str(storage.absolute(args.dst)), "family": cfg.family,
                    "heads": list(cfg.heads), "pooler": cfg.pooler}))


def _export_hf(args) -> None:
  from bertjax.interop import export_hf

  print(json.dumps({"exported": str(export_hf(args.src, args.dst))}))


def _load_for_inference(path: str):
  from bertjax.config import ConfigError
  from bertjax.model_dir import load_model_dir

  model, tokenizer = load_model_dir(path)
  if tokenizer is None:
    raise ConfigError(f"{path} has no tokenizer/ folder; import it with its tokenizer files")
  return model, tokenizer


def _embed(args) -> None:
  import numpy as np

  from bertjax import inference
  from bertjax.errors import UserError

  if bool(args.text) == bool(args.input):
    raise UserError("embed: give texts on the command line or --input FILE (not both)")
  if args.output and not args.output.endswith((".npy", ".npz", ".jsonl")):
    raise UserError(f"--output {args.output}: name it .npy (vectors), .jsonl (one object per "
                    "text) or .npz (--pooling none)")
  if args.pooling == "none" and args.normalize:
    raise UserError("embed: --normalize needs pooled vectors, not --pooling none")
  if args.pooling == "none" and args.output and not args.output.endswith(".npz"):
    raise UserError(f"--output {args.output}: --pooling none writes an .npz (embeddings "
                    "[n, len, hidden] and mask [n, len]); name it .npz")
  if args.input:
    inference.check_text_file(args.input, args.field)  # a missing file or field: before loading
  model, tokenizer = _load_for_inference(args.checkpoint)
  # a sentence encoder (trained here, or a sentence-transformers import) embeds as its authors
  # defined it unless --pooling / --normalize say otherwise
  pooling = args.pooling or model.config.sentence_pooling or "mean"
  normalize = args.normalize if args.normalize is not None else (
      args.pooling is None and model.config.sentence_normalize)
  embedder = inference.Embedder(model, tokenizer, pooling=pooling, layer=args.layer,
                                max_length=args.max_length, batch_size=args.batch_size,
                                normalize=normalize)
  texts = (lambda: inference.read_texts(args.input, args.field)) if args.input else \
      (lambda: iter(args.text))
  if args.output:
    inference.write_embeddings(embedder, texts, args.output)
    print(json.dumps({"output": args.output}))
  else:
    rows = zip(texts(), embedder.stream(texts()))
    for text, vector in rows:
      print(json.dumps({"text": text, "embedding": np.asarray(vector).tolist()}))


def _fill_mask(args) -> None:
  from bertjax.inference import fill_mask

  model, tokenizer = _load_for_inference(args.checkpoint)
  print(json.dumps(fill_mask(model, tokenizer, args.text, top_k=args.top_k), indent=1))


def _train_tokenizer(args) -> None:
  from bertjax.data.train_tokenizer import train_tokenizer

  out = train_tokenizer(args.files, args.out, kind=args.kind, vocab_size=args.vocab_size,
                        lowercase=not args.cased, min_frequency=args.min_frequency)
  print(json.dumps({"tokenizer": str(out)}))


# the commands that compile programs (and so use the persistent compilation cache); not
# `compile` and `plan`: an executable for compile-only TPU devices cannot be read back (no
# client to load it), so caching one only brings a warning the next time
COMPILING = {"pretrain", "finetune", "evaluate", "predict", "embed", "fill-mask", "doctor"}


def _doctor(args) -> None:
  from bertjax.environment import report

  r = report()
  if args.json:
    print(json.dumps(r, indent=1))
    return
  for key, value in r.items():
    if isinstance(value, dict):
      value = ", ".join(f"{k} {v}" for k, v in value.items()) or "--"
    print(f"{key:18} {value}")


def _initialize_distributed(args) -> None:
  """``--distributed``: Cloud TPU VMs / SLURM (coordinator and process ids auto-detected), with
  SIGTERM agreement armed and a bounded wait on a dead process (``train/preemption.py``)."""
  if args.distributed:
    from bertjax.train import preemption

    preemption.initialize(heartbeat_timeout_seconds=args.heartbeat_timeout)


def _pretrain(args) -> int | None:
  from bertjax.config import experiment_config
  from bertjax.train.pretrain import pretrain

  _initialize_distributed(args)
  preset, overrides = _preset_and_overrides(args.args)
  result = pretrain(experiment_config(preset, overrides),
                    allow_config_change=args.allow_config_change)
  if result["preempted"]:  # saved on SIGTERM: not done (status.json says "preempted")
    print(json.dumps(result))
    return EXIT_PREEMPTED
  ev = result["eval"]
  summary = {"held_out_mlm_accuracy": round(ev["mlm_accuracy"], 4),
             "unigram_baseline_accuracy": round(result["unigram_baseline_accuracy"], 4),
             "held_out_mlm_loss": round(ev["mlm_loss"], 4),
             "unigram_baseline_loss": round(result["unigram_baseline_loss"], 4),
             "steps": result["step"],
             "checkpoint": result["checkpoint"], "model": result["model"]}
  if "nsp_accuracy" in ev:
    summary["held_out_nsp_accuracy"] = round(ev["nsp_accuracy"], 4)
  print(json.dumps(summary, indent=1))
  print(f"held-out MLM accuracy {ev['mlm_accuracy']:.4f} (unigram baseline "
        f"{result['unigram_baseline_accuracy']:.4f}); checkpoints in {result['checkpoint']}; "
        f"try: bertjax fill-mask {result['model']} \"the [MASK] of the house\"", file=sys.stderr)


def _finetune(args) -> int:
  from bertjax.config import finetune_config
  from bertjax.tasks.finetune import finetune

  _initialize_distributed(args)
  summary = finetune(finetune_config(args.task, args.overrides),
                     allow_config_change=args.allow_config_change)
  print(json.dumps(summary, indent=1))
  return EXIT_PREEMPTED if summary.get("preempted") else 0


def _evaluate(args) -> None:
  from bertjax.tasks.serve import evaluate_model

  print(json.dumps(evaluate_model(args.model, args.data, args.task, args.overrides,
                                  args.batch_size), indent=1))


def _predict(args) -> None:
  from bertjax.tasks.serve import predict_model

  n = predict_model(args.model, args.data, args.output, args.task, args.overrides,
                    args.batch_size)
  print(json.dumps({"predictions": args.output, "examples": n}))


def _prepare_data(args) -> None:
  from bertjax.config import experiment_config
  from bertjax.data.prepare import prepare_data
  from bertjax.errors import UserError

  preset, overrides = _preset_and_overrides(args.args)
  cfg = experiment_config(preset, overrides).data
  if args.beam is None:
    out = prepare_data(cfg, args.out, args.shards, workers=args.workers, shard=args.shard,
                       unit_bytes=args.unit_mb << 20, poll=args.poll_seconds)
  else:
    if args.workers != 1 or args.shard != (0, 1):
      raise UserError("prepare-data: --beam runs on the runner's workers; drop --workers and "
                      "--shard (set the runner's parallelism in the Beam options)")
    from bertjax.data.beam import prepare_data_beam

    out = prepare_data_beam(cfg, args.out, args.shards, options=args.beam,
                            unit_bytes=args.unit_mb << 20)
  print(json.dumps({"prepared": str(out), "use": f"data.source={out}"}))


def _compile_only() -> None:
  """A CPU process compiling for TPU: the default backend stays the CPU (the TPU devices are
  compile-only), and libtpu neither asks a metadata server nor takes its single-user lock."""
  import os

  for key, value in (("JAX_PLATFORMS", "cpu"), ("TPU_SKIP_MDS_QUERY", "1"),
                     ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
    os.environ.setdefault(key, value)
  import jax

  jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])


def _compile(args) -> int:
  _compile_only()
  from bertjax.config import experiment_config
  from bertjax.train.aot import advice, compile_pretraining, format_report

  preset, overrides = _preset_and_overrides(args.args)
  report = compile_pretraining(experiment_config(preset, overrides), args.topology,
                               slices=args.slices, save=args.save, vocab_size=args.vocab_size)
  if args.json:
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
  print(format_report(report))
  if not report["fits"]:
    print(f"bertjax compile: {advice(report)}", file=sys.stderr)
    return 1
  return 0


def _plan(args) -> int:
  _compile_only()
  from bertjax.config import experiment_config
  from bertjax.train.plan import REMATS, format_plan, search, write_plan

  preset, overrides = _preset_and_overrides(args.args)
  if args.objective:
    overrides = [*overrides, f"objective={args.objective}"]
  cfg = experiment_config(preset, overrides)  # a bad key or value fails before any compile
  if args.write and Path(args.write).exists():  # checked now, not after the search
    raise FileExistsError(f"--write {args.write}: exists; choose another name")
  if args.write and not Path(args.write).parent.is_dir():
    raise FileNotFoundError(f"--write {args.write}: no folder {Path(args.write).parent}")
  report = search(cfg, args.topology, slices=args.slices, global_batch=args.global_batch,
                  vocab_size=args.vocab_size, budget_seconds=args.budget * 60, top=args.top,
                  remats=args.remat or REMATS,
                  log=lambda line: print(f"bertjax plan: {line}", file=sys.stderr, flush=True))
  if args.json:
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
  print(format_plan(report))
  if report["best"] is None:
    print("bertjax plan: no compiled plan fits; try more chips, a smaller global batch or "
          "--global-batch max", file=sys.stderr)
    return 1
  if args.write:
    print(json.dumps({"written": str(write_plan(report, preset, overrides, args.write)),
                      "use": f"bertjax pretrain {args.write}"}))
  return 0


def _global_batch(text: str) -> int | str:
  return text if text == "max" else _positive(text)


def _remats(text: str) -> tuple[str, ...]:
  from bertjax.train.plan import REMATS

  names = tuple(x for x in text.split(",") if x)
  bad = [x for x in names if x not in REMATS]
  if bad or not names:
    raise argparse.ArgumentTypeError(f"{', '.join(bad) or repr(text)}: choose from "
                                     f"{', '.join(REMATS)}")
  return names


def _plot(args) -> None:
  from bertjax.plot import plot_runs

  print(json.dumps({"plot": str(plot_runs(args.runs, args.out))}))


def _preset_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
  if items and "=" not in items[0]:
    return items[0], items[1:]
  return None, items


_ALLOW_HELP = ("resume a run whose saved config differs in more than steps, cadences, "
               "checkpoint retention, logging or the mesh (the change is recorded)")


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
  return value


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if not value > 0:
    raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
  return value


def _host_shard(text: str) -> tuple[int, int]:
  try:
    i, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected i/N (e.g. 0/4), got {text!r}") from None
  if not 0 <= i < n:
    raise argparse.ArgumentTypeError(f"i/N needs 0 <= i < N, got {text}")
  return i, n


class _Parser(argparse.ArgumentParser):
  """Usage errors as one line too (``bertjax CMD: error: ...``, exit 2); --help has the rest."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _distributed_args(s) -> None:
  s.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() first (multi-host TPU pods); a SIGTERM "
                 "to any host saves the same step on all")
  s.add_argument("--heartbeat-timeout", type=_positive, default=100, metavar="SECONDS",
                 help="with --distributed: the other processes exit this long after one dies "
                 "(default 100)")


def _version() -> str:
  from bertjax.environment import version

  return version("bertjax") or "unknown"


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog="bertjax", description=__doc__)
  p.add_argument("--version", action="version", version=f"bertjax {_version()}")
  sub = p.add_subparsers(dest="command", required=True)

  s = sub.add_parser("pretrain", help="pretrain (or resume) from a preset/YAML + key=value overrides")
  s.add_argument("args", nargs="*", metavar="[PRESET_OR_YAML] [key=value ...]")
  _distributed_args(s)
  s.add_argument("--allow-config-change", action="store_true", help=_ALLOW_HELP)
  s.set_defaults(func=_pretrain)

  s = sub.add_parser("compile", help="compile the pretraining step for a Cloud TPU topology "
                     "(no TPU needed): memory per chip, fits or not, FLOPs, roofline MFU")
  s.add_argument("args", nargs="*", metavar="[PRESET_OR_YAML] [key=value ...]")
  s.add_argument("--topology", required=True,
                 help="v5e-16 / v5litepod-16, v5p-128, v4-32, v6e-64, or GEN:SHAPE (v5e:4x4)")
  s.add_argument("--slices", type=_positive, default=1, help="multislice: number of slices")
  s.add_argument("--json", help="write the report to this JSON file")
  s.add_argument("--save", help="write the serialized TPU executable to this file")
  s.add_argument("--vocab-size", type=_positive, default=None,
                 help="the vocabulary size to compile for (default: the tokenizer's)")
  s.set_defaults(func=_compile)

  s = sub.add_parser("plan", help="search mesh split, remat, microbatch and attention for a "
                     "Cloud TPU slice (no TPU needed): ranked plans, the best one's overrides")
  s.add_argument("args", nargs="*", metavar="[PRESET_OR_YAML] [key=value ...]")
  s.add_argument("--topology", required=True,
                 help="v5e-16 / v5litepod-16, v5p-128, v6e-64, or GEN:SHAPE (v5e:4x4)")
  s.add_argument("--slices", type=_positive, default=1, help="multislice: number of slices")
  s.add_argument("--global-batch", type=_global_batch, default=None, metavar="B|max",
                 help="sequences per step to plan for (default: train.batch_size); max: the "
                 "largest microbatch per chip that fits, ranked by tokens/s per chip")
  s.add_argument("--objective", default=None,
                 help="the pretraining objective (as objective=...; default: the preset's)")
  s.add_argument("--remat", type=_remats, default=None, metavar="POLICY[,POLICY...]",
                 help="the remat policies to search (default: none,dots,names,full)")
  s.add_argument("--budget", type=_positive_float, default=20.0, metavar="MINUTES",
                 help="wall-clock budget for the whole search (default 20)")
  s.add_argument("--top", type=_positive, default=4,
                 help="plans compiled at full depth besides the given one (default 4): the "
                 "best predicted, and from 2 on the leader's unrolled twin last")
  s.add_argument("--vocab-size", type=_positive, default=None,
                 help="the vocabulary size to plan for (default: the tokenizer's)")
  s.add_argument("--json", help="write the report to this JSON file")
  s.add_argument("--write", metavar="FILE", help="write the best plan as an experiment YAML "
                 "that `bertjax pretrain FILE` takes")
  s.set_defaults(func=_plan)

  s = sub.add_parser("finetune", help="fine-tune a checkpoint on labeled data (a task YAML)")
  s.add_argument("task", metavar="TASK_YAML", help="configs/tasks preset name or YAML path")
  s.add_argument("overrides", nargs="*", metavar="key=value")
  _distributed_args(s)
  s.add_argument("--allow-config-change", action="store_true", help=_ALLOW_HELP)
  s.set_defaults(func=_finetune)

  for name, helptext in (("evaluate", "score a fine-tuned model on a labeled file"),
                         ("predict", "predict a file with a fine-tuned model (JSONL out)")):
    s = sub.add_parser(name, help=helptext)
    s.add_argument("model", help="fine-tuned model folder or fine-tuning run folder")
    s.add_argument("data", help="a file in the task's format")
    if name == "predict":
      s.add_argument("--output", required=True, help="JSONL file to write")
    s.add_argument("--task", default=None,
                   help="the task YAML it was trained with (fields, format, QA settings)")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.add_argument("--batch-size", type=_positive, default=64)
    s.set_defaults(func=_evaluate if name == "evaluate" else _predict)

  s = sub.add_parser("prepare-data", help="tokenize a corpus once into ArrayRecord instances")
  s.add_argument("args", nargs="*", metavar="[PRESET_OR_YAML] [key=value ...]")
  s.add_argument("--out", required=True, help="output folder (local or gs://)")
  s.add_argument("--shards", type=_positive, default=None,
                 help="training shards (default: about 128 MB each)")
  s.add_argument("--workers", type=_positive, default=1,
                 help="processes on this machine (default 1)")
  s.add_argument("--shard", type=_host_shard, default=(0, 1), metavar="i/N",
                 help="this host's share when N hosts prepare into the same folder at once")
  s.add_argument("--poll-seconds", type=_positive_float, default=5.0, metavar="S",
                 help="with --shard: how often a host looks at the others' progress (5)")
  s.add_argument("--unit-mb", type=_positive, default=64,
                 help="MiB of a plain text file per work unit (default 64; part of the result)")
  s.add_argument("--beam", default=None, metavar="OPTIONS",
                 help='run as an Apache Beam pipeline with these pipeline options ("" = '
                      'DirectRunner; e.g. "--runner=DataflowRunner --project=P --region=R '
                      '--temp_location=gs://B/tmp")')
  s.set_defaults(func=_prepare_data)

  s = sub.add_parser("import-hf", help="transformers folder -> bertjax model folder")
  s.add_argument("src")
  s.add_argument("dst")
  s.add_argument("--overwrite", action="store_true")
  s.set_defaults(func=_import_hf)

  s = sub.add_parser("export-hf", help="bertjax model folder -> transformers folder")
  s.add_argument("src")
  s.add_argument("dst")
  s.set_defaults(func=_export_hf)

  s = sub.add_parser("embed", help="embed texts with a model folder (streams any number of "
                     "them: length-sorted batches, one compile per length bucket)")
  s.add_argument("checkpoint")
  s.add_argument("text", nargs="*", help="texts to embed (or --input)")
  s.add_argument("--input", help="a .jsonl file (one object per line, the text in --field) or "
                 "a text file (one text per line); gs:// too")
  s.add_argument("--field", default="text", help="the JSONL field holding the text")
  s.add_argument("--batch-size", type=_positive, default=32)
  s.add_argument("--pooling", choices=["cls", "mean", "none"], default=None,
                 help="default: the model's own (a sentence encoder's), else mean")
  s.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                 help="unit-length vectors (default: as the model's own pooling has it)")
  s.add_argument("--layer", type=int, default=-1, help="hidden state index (0 = embeddings)")
  s.add_argument("--max-length", type=_positive, default=None)
  s.add_argument("--output", help="write .npy ([n, hidden], input order), .jsonl ({text, "
                 "embedding} per line) or, with --pooling none, .npz (embeddings [n, len, "
                 "hidden] and mask [n, len]) instead of printing JSON lines")
  s.set_defaults(func=_embed)

  s = sub.add_parser("fill-mask", help="predict [MASK] tokens")
  s.add_argument("checkpoint")
  s.add_argument("text")
  s.add_argument("--top-k", type=_positive, default=5)
  s.set_defaults(func=_fill_mask)

  s = sub.add_parser("plot", help="loss, accuracy, learning rate and tokens/s of runs, one PNG")
  s.add_argument("runs", nargs="+", metavar="RUN", help="pretraining or fine-tuning run folders")
  s.add_argument("--out", default="curves.png", help="image file to write (default curves.png)")
  s.set_defaults(func=_plot)

  s = sub.add_parser("doctor", help="versions, devices, processes, gs:// support and the "
                     "compilation cache: what a bug report needs")
  s.add_argument("--json", action="store_true", help="as JSON")
  s.set_defaults(func=_doctor)

  s = sub.add_parser("train-tokenizer", help="train a vocabulary from text files")
  s.add_argument("files", nargs="+")
  s.add_argument("--out", required=True)
  s.add_argument("--kind", choices=["wordpiece", "bpe", "sentencepiece"], default="wordpiece")
  s.add_argument("--vocab-size", type=_positive, default=30522)
  s.add_argument("--min-frequency", type=_positive, default=2)
  s.add_argument("--cased", action="store_true")
  s.set_defaults(func=_train_tokenizer)
  return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """Options, the preset and ``key=value`` overrides in any order, as people type them:
  argparse stops filling a ``nargs="*"`` positional at the first option, so the words after it
  come back unparsed and join that positional (the overrides, the texts) here."""
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if not extra:
    return args
  sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
  rest = [a for a in sub.choices[args.command]._actions
          if not a.option_strings and a.nargs == "*"]
  if not rest or any(x.startswith("-") and x != "-" for x in extra):
    parser.parse_args(argv)  # argparse's own one-line error about what it does not know
  setattr(args, rest[-1].dest, [*getattr(args, rest[-1].dest), *extra])
  return args


def main(argv: list[str] | None = None) -> int:
  try:
    args = parse_args(argv)
  except SystemExit as e:  # usage errors (one line, exit 2) and --help (exit 0)
    return e.code if isinstance(e.code, int) else 2
  from bertjax.errors import UserError

  if args.command in COMPILING:  # a warm start: programs compiled once are read back
    from bertjax.environment import use_compilation_cache

    use_compilation_cache()
  with warnings.catch_warnings():  # the library's warnings as the CLI's own one-liners
    warnings.showwarning = lambda message, *_, **__: print(
        f"bertjax {args.command}{_process_tag()}: warning: {message}", file=sys.stderr,
        flush=True)
    try:
      code = args.func(args) or 0
    except (UserError, FileExistsError, FileNotFoundError, IsADirectoryError,
            NotADirectoryError, PermissionError) as e:
      return _fail(args.command, e)
    except Exception as e:  # a full disk surfaces through many layers; anything else is a bug
      full = _disk_full(e)
      if full is None:
        raise
      return _fail(args.command, f"no space left on device writing {full}; free some space "
                                 "and run the same command again (finished checkpoints are "
                                 "intact)")
  return code


def _process_tag() -> str:
  """`` [process k]`` in a multi-process run (every process may warn; only 0 logs progress)."""
  if "jax" not in sys.modules:
    return ""
  import jax

  if not jax.distributed.is_initialized():
    return ""
  return f" [process {jax.process_index()}]" if jax.process_count() > 1 else ""


def _fail(command: str, message) -> int:
  print(f"bertjax {command}{_process_tag()}: error: {str(message).splitlines()[0]}",
        file=sys.stderr)
  return 2


def _disk_full(e: BaseException | None) -> str | None:
  """The file (or message) of an ENOSPC/EDQUOT anywhere in ``e``'s chain, else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return str(e.filename or e.strerror)
    if "No space left on device" in str(e):  # tensorstore / Orbax: the file in quotes
      quoted = re.findall(r'"(/[^"]+)"', str(e))
      return quoted[-1] if quoted else str(e).splitlines()[0][:200]
    e = e.__cause__ or e.__context__
  return None


if __name__ == "__main__":
  sys.exit(main())
