"""The collectives of a compiled program, read from its optimized HLO text, and what they cost on
a TPU slice's links.

``read_collectives(hlo, devices)`` finds every all-gather, reduce-scatter, all-reduce, all-to-all
and collective-permute (async ``-start`` forms included), in every computation the entry
reaches, counted as often as it runs: an op inside a ``while`` body (a scanned layer stack)
counts its loop's trip count times (XLA's ``known_trip_count``, else the ``i < N`` bound of its
condition). Each has its kind, its tensor bytes, its replica groups and whether a group spans
slices: then it crosses the data-center network (DCN) rather than the slice's inter-chip
interconnect (ICI). A multislice program compiles per slice and hands its cross-slice
collectives to the megascale runtime as host-transfer ``send`` ops, read here as DCN collectives
over the slices.

What crosses a link per device is the usual ring algorithm's traffic (what NCCL's tests call bus
bytes): an all-gather of an ``S``-byte result over a group of ``n`` sends ``S (n-1)/n`` per
device, a reduce-scatter of an ``S``-byte input the same, an all-reduce ``2 S (n-1)/n``, an
all-to-all ``S (n-1)/n``, a collective-permute ``S``. ``link_seconds`` divides it by the chip's
ICI or DCN bandwidth (``flops.CHIPS``) -- a model, not a measurement: see ``LIMITS``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict

import numpy as np

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

LIMITS = ("communication is the ring traffic of each collective at the chip's published "
          "bandwidth, every ICI port in use (half the bidirectional figure each way); it does "
          "not model how much of it overlaps compute in practice, link contention, latency of "
          "small collectives, host input throughput or stragglers")

_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
          "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "s16": 2, "u16": 2, "f16": 2,
          "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
          "c128": 16}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str  # one of KINDS
  name: str  # the HLO instruction
  bytes: float  # the whole tensor: all-gather's result, reduce-scatter's input, the rest's result
  group_size: int  # devices per replica group (2 for a permute's pairs)
  groups: int  # replica groups
  crosses_slices: bool  # a group holds devices of two slices: it runs over DCN
  count: int  # times it runs per step (while loops' trip counts)

  @property
  def traffic(self) -> float:
    """Bytes each device sends per run (ring algorithm)."""
    n = self.group_size
    if n <= 1:
      return 0.0
    if self.kind == "collective-permute":
      return self.bytes
    return (2.0 if self.kind == "all-reduce" else 1.0) * self.bytes * (n - 1) / n


def shape_bytes(text: str) -> float:
  """Bytes of every array in an HLO type (an array or a tuple of them)."""
  return float(sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
                   for t, dims in _ARRAY.findall(text)))


def _split_type(rest: str) -> tuple[str, str]:
  """'TYPE opcode(...)...' -> (TYPE, 'opcode(...)...'); a tuple type may hold spaces."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        return rest[:i + 1], rest[i + 1:].lstrip()
  head, _, tail = rest.partition(" ")
  return head, tail


def _groups(line: str, num_devices: int) -> list[list[int]]:
  """The replica groups of a collective (logical device ids), in any of XLA's three spellings:
  explicit ``{{0,1},{2,3}}``, iota ``[2,4]<=[4,2]T(1,0)``, mesh axes ``mesh['a'=2,'b'=4] {'b'}``;
  a permute's ``source_target_pairs`` as two-device groups."""
  m = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", line)
  if m:
    return [[int(x) for x in pair.split(",")] for pair in re.findall(r"\{([\d,]+)\}", m.group(1))]
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if m:
    axes = [(name, int(size)) for name, size in re.findall(r"'([^']+)'=(\d+)", m.group(1))]
    names = [n for n, _ in axes]
    chosen = [names.index(a) for a in re.findall(r"'([^']+)'", m.group(2))]
    ids = np.arange(math.prod(s for _, s in axes)).reshape([s for _, s in axes])
    rest = [i for i in range(len(axes)) if i not in chosen]
    grouped = ids.transpose(rest + chosen).reshape(-1, math.prod(axes[i][1] for i in chosen))
    return grouped.tolist()
  m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
  if m:
    shape = [int(x) for x in m.group(1).split(",")]
    ids = np.arange(math.prod(int(x) for x in m.group(2).split(","))).reshape(
        [int(x) for x in m.group(2).split(",")])
    if m.group(3):
      ids = ids.transpose([int(x) for x in m.group(3).split(",")])
    return ids.reshape(shape[0], -1).tolist()
  m = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)+)\}", line)
  if m:
    return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", m.group(1))]
  return [list(range(num_devices))]


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
  comps, entry, current = {}, "", None
  for line in hlo.splitlines():
    m = _COMPUTATION.match(line)
    if m and not line.startswith(" "):
      current = m.group(2)
      comps[current] = []
      if m.group(1):
        entry = current
    elif line.startswith("}"):
      current = None
    elif current is not None:
      comps[current].append(line)
  return comps, entry


def _trip_count(comps: dict[str, list[str]], line: str) -> int:
  """A ``while`` loop's trip count: XLA's ``known_trip_count``, else -- TPU's windowed-einsum
  loops record none -- the bound of a condition that compares the counter against one constant,
  ``i < N`` from 0; 1 when neither is there."""
  known = _TRIP.search(line)
  if known:
    return int(known.group(1))
  m = re.search(r"condition=(%?[\w.\-]+)", line)
  body = comps.get(m.group(1).lstrip("%"), []) if m else []
  root = next((x for x in body if x.lstrip().startswith("ROOT") and " compare(" in x), "")
  constants = [int(c.group(1)) for x in body
               for c in [re.search(r"\bconstant\((\d+)\)", x)] if c]
  return constants[0] if "direction=LT" in root and len(constants) == 1 else 1


def _runs_per_step(comps: dict[str, list[str]], entry: str) -> dict[str, int]:
  """How often each computation runs per execution of ``entry``: a while body or condition its
  loop's trip count times per run of its caller."""
  callees: dict[str, list[tuple[str, int]]] = defaultdict(list)
  for name, lines in comps.items():
    for line in lines:
      trips = _trip_count(comps, line) if " while(" in line else 1
      for m in re.finditer(r"\b(calls|to_apply|body|condition|branch_computations|"
                           r"called_computations)=(?:\{([^}]*)\}|(%?[\w.\-]+))", line):
        times = trips if m.group(1) in ("body", "condition") else 1
        for callee in (m.group(2) or m.group(3)).split(","):
          callees[name].append((callee.strip().lstrip("%"), times))
  runs: dict[str, int] = defaultdict(int)

  def visit(name: str, times: int, depth: int = 0) -> None:
    if depth > 64:  # HLO call graphs are acyclic; this only guards a malformed text
      return
    runs[name] += times
    for callee, n in callees.get(name, ()):
      if callee in comps:
        visit(callee, times * n, depth + 1)

  visit(entry, 1)
  return runs


def read_collectives(hlo: str, devices: list | None = None) -> list[Collective]:
  """Every collective of an optimized HLO module (``compiled.as_text()``). ``devices``: the
  program's devices in logical-id order (its mesh's devices, flattened); their
  ``slice_index`` tells which groups cross slices."""
  comps, entry = _computations(hlo)
  runs = _runs_per_step(comps, entry)
  n = len(devices) if devices else 0
  slice_of = [getattr(d, "slice_index", 0) or 0 for d in devices] if devices else []
  out = []
  for comp, lines in comps.items():
    if not runs.get(comp):
      continue
    for line in lines:
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      type_text, rest = _split_type(line[m.end():])
      opcode = rest.partition("(")[0]
      if opcode == "send" and "_xla_megascale_transfer_type" in line:
        out.append(_megascale(m.group(1), type_text, line, runs[comp]))
        continue
      kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
      if kind not in KINDS:
        continue
      if opcode.endswith("-start") and kind in ("all-gather", "collective-permute"):
        # (operands, results[, contexts]): the results are the tuple's second entry
        parts = _tuple_parts(type_text)
        type_text = parts[1] if len(parts) > 1 else type_text
      size = shape_bytes(type_text)
      groups = _groups(line, n)
      group_size = max((len(g) for g in groups), default=1)
      if kind == "reduce-scatter":
        size *= group_size  # its result is one shard of the reduced input
      crosses = bool(slice_of) and any(len({slice_of[i] for i in g if i < n}) > 1
                                       for g in groups)
      out.append(Collective(kind, m.group(1), size, group_size, len(groups), crosses,
                            runs[comp]))
  return out


def _megascale(name: str, type_text: str, line: str, count: int) -> Collective:
  """A collective between slices: multislice programs hand it to the megascale runtime as a
  host-transfer ``send`` whose attributes name the transfer (ALL_REDUCE, ALL_GATHER, ...) and
  its target (``{slices}x{devices}``); the payload is the send's first operand."""
  transfer = re.search(r'_xla_megascale_transfer_type="(\w+)"', line).group(1)
  target = re.search(r'_xla_megascale_target="\{([\d,]*)\}', line)
  slices = len([x for x in target.group(1).split(",") if x]) if target else 2
  kind = transfer.lower().replace("_", "-")
  size = shape_bytes(_tuple_parts(type_text)[0])  # a reduce-scatter's whole input, else a shard
  if kind == "all-gather":
    size *= slices  # its result
  return Collective(kind if kind in KINDS else "collective-permute", name, size, slices, 1, True,
                    count)


def _tuple_parts(text: str) -> list[str]:
  """'(a, (b, c), d)' -> ['a', '(b, c)', 'd']."""
  if not text.startswith("("):
    return [text]
  parts, depth, start = [], 0, 1
  for i, ch in enumerate(text):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if (ch == "," and depth == 1) or (depth == 0 and ch == ")"):
      parts.append(text[start:i].strip())
      start = i + 1
  return [p for p in parts if p]


def summarize(collectives: list[Collective]) -> dict:
  """Per kind and network: runs per step, tensor bytes and per-device traffic per step."""
  out: dict = {}
  for c in collectives:
    key = f"{c.kind} ({'DCN' if c.crosses_slices else 'ICI'})"
    row = out.setdefault(key, {"ops": 0, "runs": 0, "bytes": 0.0, "traffic": 0.0})
    row["ops"] += 1
    row["runs"] += c.count
    row["bytes"] += c.bytes * c.count
    row["traffic"] += c.traffic * c.count
  return out


def link_seconds(collectives: list[Collective], chip) -> dict[str, float] | None:
  """Seconds per step the collectives keep each device's links busy: ICI traffic at half the
  chip's bidirectional ICI bandwidth (what it can send), DCN traffic at its DCN share."""
  if chip is None or not chip.ici_bandwidth:
    return None
  ici = sum(c.traffic * c.count for c in collectives if not c.crosses_slices)
  dcn = sum(c.traffic * c.count for c in collectives if c.crosses_slices)
  if dcn and not chip.dcn_bandwidth:
    return None
  return {"ici": ici / (chip.ici_bandwidth / 2), "dcn": dcn / chip.dcn_bandwidth if dcn else 0.0}
