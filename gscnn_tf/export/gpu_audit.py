"""Static audit of a TFLite file against the TFLite GPU delegate: every op of the main
subgraph with its version, whether the delegate would take it (and why not: the rules of
`gscnn_tf.export.delegate_rules`), and the partitions the delegate would cut the graph into.
`gscnn-tf audit-tflite FILE` (gscnn_tf.cli.audit_tflite) prints it; the `--target gpu` export
(`gscnn_tf.export.gpu`) writes a file only when it is clean.

An op the delegate rejects in the middle of the graph splits the graph between GPU and CPU;
the delegate then takes only its largest partition (`max_delegated_partitions` = 1 by
default), so most of a network can end up on the CPU. The file is read with
`gscnn_tf.export.flatbuffer.read_model`; no interpreter is built.
"""

from __future__ import annotations

import dataclasses

from gscnn_tf import files
from gscnn_tf.errors import ExportError
from gscnn_tf.export.delegate_rules import GPU_DELEGATE_CUSTOM_OPS, GPU_DELEGATE_OPS, rejection
from gscnn_tf.export.flatbuffer import read_model


@dataclasses.dataclass
class OpAudit:
    index: int
    name: str
    version: int
    max_version: int | None
    supported: bool
    reason: str  # why not ("" when supported); a note for a supported op ("fp16 weights")
    partition: int | None = None  # index of the delegated partition it falls in


@dataclasses.dataclass
class AuditReport:
    path: str
    ops: list
    partitions: list  # lists of op indices, one per partition the delegate would take
    other_subgraphs: int

    @property
    def unsupported(self) -> list:
        return [op for op in self.ops if not op.supported]

    @property
    def clean(self) -> bool:
        """Every op on the delegate, in one partition."""
        return not self.unsupported and len(self.partitions) == 1

    def summary(self) -> str:
        """One line: partitions, ops on the GPU / CPU, the unsupported ops by kind."""
        largest = max((len(p) for p in self.partitions), default=0)
        if self.clean:
            return (f"GPU delegate audit: clean, all {len(self.ops)} ops in one partition")
        kinds: dict[str, int] = {}
        for op in self.unsupported:
            key = f"{op.name} ({op.reason})"
            kinds[key] = kinds.get(key, 0) + 1
        listed = "; ".join(f"{k} x{n}" for k, n in kinds.items())
        return (f"GPU delegate audit: {len(self.partitions)} partition(s); the delegate takes "
                f"the largest ({largest} of {len(self.ops)} ops), the rest run on the CPU; "
                f"unsupported: {listed}")

    def text(self) -> str:
        """The op table (index, op, version, the delegate's highest version, verdict,
        partition) and the summary line."""
        rows = [f"{'#':>4}  {'op':<24}{'version':>8}{'max':>6}  {'partition':<10}verdict"]
        for op in self.ops:
            verdict = "GPU" if op.supported else f"CPU: {op.reason}"
            if op.supported and op.reason:
                verdict += f" ({op.reason})"
            partition = "-" if op.partition is None else str(op.partition)
            max_version = "any" if op.max_version is None else str(op.max_version)
            if op.name not in GPU_DELEGATE_OPS and op.name not in GPU_DELEGATE_CUSTOM_OPS:
                max_version = "-"
            rows.append(f"{op.index:>4}  {op.name:<24}{op.version:>8}{max_version:>6}  "
                        f"{partition:<10}{verdict}")
        notes = []
        if self.other_subgraphs:
            notes.append(f"{self.other_subgraphs} further subgraph(s) (bodies of control-flow "
                         "ops) are not delegated")
        return "\n".join([f"{self.path}: {len(self.ops)} ops", *rows, *notes, self.summary()])


def _partitions(ops: list, supported: list, tensors: list, graph_inputs: list) -> list:
    """The delegated partitions, by the walk of TFLite's PartitionGraphIntoIndependentNodeSubsets
    (graph_info.cc): each round, the first node (in execution order) whose inputs are ready
    sets the round's kind, supported or not, and every node of that kind that becomes ready
    joins it, until none does. Returns the supported rounds, each a list of op indices."""
    ready = {t.index for t in tensors if t.constant} | set(graph_inputs)
    left = list(range(len(ops)))
    subsets = []
    while left:
        def is_ready(i):
            return all(t < 0 or t in ready for t in ops[i].inputs)

        first = next((i for i in left if is_ready(i)), None)
        if first is None:  # a cycle or an input nothing produces: no more partitions
            break
        kind, taken, grew = supported[first], [], True
        while grew:
            grew = False
            for i in list(left):
                if supported[i] == kind and is_ready(i):
                    taken.append(i)
                    left.remove(i)
                    ready.update(ops[i].outputs)
                    grew = True
        if kind:
            subsets.append(sorted(taken))
    return subsets


def audit(content: bytes, path: str = "<bytes>") -> AuditReport:
    """Audits a TFLite flatbuffer (`content`) against the GPU delegate; `path` names it in
    messages. The report lists every op of the main subgraph with its version and verdict
    and the partitions the delegate would make (`report.clean`: one partition, nothing
    unsupported)."""
    ops, tensors, graph_inputs, others = read_model(content, path)
    producers, consumers = {}, {}
    for op in ops:
        for t in op.outputs:
            producers[t] = op
        for t in op.inputs:
            if t >= 0:
                consumers.setdefault(t, []).append(op)
    audits = []
    for op in ops:
        max_version = GPU_DELEGATE_OPS.get(op.name)
        note = ""
        if op.custom:
            known = op.name in GPU_DELEGATE_CUSTOM_OPS
            reason = "" if known else "custom op without a GPU delegate parser"
        elif op.name not in GPU_DELEGATE_OPS:
            reason = "no GPU delegate parser for this op"
        elif max_version is not None and op.version > max_version:
            reason = f"version {op.version} above the delegate's {max_version}"
        else:
            reason = rejection(op, tensors, consumers, producers)
            source = tensors[op.inputs[0]] if op.inputs else None
            if not reason and op.name == "DEQUANTIZE" and source.constant and \
                    source.dtype == "FLOAT16":
                note = "fp16 weights, dequantized once by the delegate"
        audits.append(OpAudit(op.index, op.name, op.version, max_version, not reason,
                              reason or note))
    parts = _partitions(ops, [a.supported for a in audits], tensors, graph_inputs)
    for number, part in enumerate(sorted(parts, key=len, reverse=True)):
        for i in part:
            audits[i].partition = number
    return AuditReport(path, audits, sorted(parts, key=len, reverse=True), others)


def audit_file(path: str) -> AuditReport:
    """`audit` of a .tflite file."""
    if not files.isfile(path):
        raise ExportError(f"{path}: no such TFLite file")
    return audit(files.read_bytes(path), path)
