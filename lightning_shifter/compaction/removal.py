"""Which channel sets go: a least fixed point over the reads found by :mod:`.graph`.

A set goes when none of its channels is pinned and every read of every channel of it is
droppable: the channel is zero there, or every *surviving* output of the reader has zero weights
on it, or it is a constant the reader can fold into its bias exactly. Removing sets removes
outputs of readers, which can make their inputs unused in turn, so the decision is iterated from
"nothing removed" until it no longer changes; each step only adds sets, so every removal is
justified by the ones before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from lightning_shifter.compaction.graph import ChannelGraph, Read

ZERO, UNUSED, FOLDED = 0, 1, 2
REASONS = ("zero", "unused", "folded")


@dataclass
class Removal:
    """Per channel set (``labels[id]`` is the set of channel id ``id``)."""

    labels: Tensor  # int64 [ids]
    removed: Tensor  # bool [sets]
    placeholder: Tensor  # bool [sets]: removable, kept only so that a tensor keeps one channel
    reason: Tensor  # int64 [sets]: ZERO / UNUSED / FOLDED, meaningful where removed
    constant: Tensor  # bool [sets]: some tensor holds a nonzero constant in this set
    blocker: Tensor  # int64 [sets]: index into ``messages`` of why a set stays, -1 if none
    messages: list[str]
    iterations: int

    def gone(self, ids: Tensor) -> Tensor:
        return self.removed[self.labels[ids]]

    def held(self, ids: Tensor) -> Tensor:
        return self.placeholder[self.labels[ids]]


def components(graph: ChannelGraph) -> Tensor:
    """The channel set of every channel id: ids that ``graph.unions`` connects share one label."""
    if not graph.unions:
        return torch.arange(graph.num_ids)
    a = torch.cat([u[0] for u in graph.unions]).numpy()
    b = torch.cat([u[1] for u in graph.unions]).numpy()
    adjacency = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(graph.num_ids, graph.num_ids))
    _, labels = connected_components(adjacency, directed=False)
    return torch.from_numpy(labels.astype(np.int64))


class _UsedCache:
    """Per read, which input columns some kept output row reads with a nonzero weight.

    Kept as a count of such rows per column: when rows go (the fixed point only ever removes),
    only their own counts are subtracted instead of reducing the whole map again.
    """

    def __init__(self) -> None:
        self.kept: dict[int, Tensor] = {}
        self.count: dict[int, Tensor] = {}

    def __call__(self, index: int, read: Read, kept_out: Tensor) -> Tensor:
        previous = self.kept.get(index)
        if previous is None or bool((kept_out & ~previous).any()):
            rows = read.nonzero if bool(kept_out.all()) else read.nonzero[kept_out]
            self.count[index] = rows.sum(0, dtype=torch.int32)
        elif not torch.equal(previous, kept_out):
            self.count[index] -= read.nonzero[previous & ~kept_out].sum(0, dtype=torch.int32)
        self.kept[index] = kept_out
        return self.count[index] > 0


def decide(graph: ChannelGraph) -> Removal:
    labels = components(graph)
    sets = int(labels.max()) + 1 if labels.numel() else 0
    pinned = torch.zeros(sets, dtype=torch.bool)
    for ids, _ in graph.pins:
        pinned[labels[ids]] = True

    # loop invariants of each read: the sets of its outputs and inputs, and which inputs it can
    # drop whatever happens to its outputs
    loop = [
        (labels[read.layer.out_ids], labels[read.channels.ids],
         read.channels.zero | (read.channels.const & read.foldable))
        for read in graph.reads
    ]
    # blockers[set]: how many (read, input channel) pairs need the set. A round looks again only at
    # the reads that lost outputs in the round before, swapping their old contribution for the new.
    blockers = torch.zeros(sets, dtype=torch.int64)
    contributions: list[Tensor] = []
    used_by = _UsedCache()
    for index, (read, (out_sets, in_sets, always_droppable)) in enumerate(zip(graph.reads, loop)):
        contributions.append(in_sets[used_by(index, read, torch.ones_like(out_sets, dtype=torch.bool)) & ~always_droppable])
        blockers.index_add_(0, contributions[-1], torch.ones_like(contributions[-1]))
    produced = torch.cat([out_sets for out_sets, _, _ in loop]) if loop else torch.zeros(0, dtype=torch.int64)
    producer = torch.repeat_interleave(torch.arange(len(loop)), torch.tensor([len(o) for o, _, _ in loop], dtype=torch.int64))
    removed = torch.zeros(sets, dtype=torch.bool)
    iterations = 1
    while True:
        now_removed = ~pinned & (blockers == 0)
        newly = now_removed & ~removed
        removed = now_removed
        if not newly.any():
            break
        iterations += 1
        for index in producer[newly[produced]].unique().tolist():
            read, (out_sets, in_sets, always_droppable) = graph.reads[index], loop[index]
            needed = in_sets[used_by(index, read, ~removed[out_sets]) & ~always_droppable]
            blockers.index_add_(0, contributions[index], torch.full_like(contributions[index], -1))
            blockers.index_add_(0, needed, torch.ones_like(needed))
            contributions[index] = needed

    # why each set went, or why it stays
    messages: list[str] = []
    blocker = torch.full((sets,), -1, dtype=torch.int64)
    folded = torch.zeros(sets, dtype=torch.bool)
    unused = torch.zeros(sets, dtype=torch.bool)
    read_somewhere = torch.zeros(sets, dtype=torch.bool)
    for index, read in enumerate(graph.reads):
        channels = read.channels
        used = used_by(index, read, ~removed[labels[read.layer.out_ids]])
        nonzero_constant = channels.const & ~channels.zero
        set_of = labels[channels.ids]
        read_somewhere[set_of] = True
        unused[set_of[~used & ~channels.zero]] = True
        folded[set_of[used & nonzero_constant & read.foldable]] = True
        name = read.layer.node.target
        varying = used & ~channels.const
        if varying.any():
            messages.append(f"read with nonzero weights by '{name}'")
            blocker[set_of[varying]] = len(messages) - 1
        padded = used & nonzero_constant & (not read.foldable)
        if padded.any():
            messages.append(f"read by '{name}', whose zero padding makes a folded constant inexact")
            blocker[set_of[padded]] = len(messages) - 1
    for ids, reason in graph.pins:
        messages.append(reason)
        blocker[labels[ids]] = len(messages) - 1
    reason = torch.full((sets,), ZERO, dtype=torch.int64)
    reason[unused | ~read_somewhere] = UNUSED
    reason[folded] = FOLDED

    values = list(graph.values.values())
    value_ids = torch.cat([channels.ids for channels in values]) if values else torch.zeros(0, dtype=torch.int64)
    value_sets = labels[value_ids]
    constant = torch.zeros(sets, dtype=torch.bool)
    if values:
        constant[value_sets[torch.cat([channels.const & ~channels.zero for channels in values])]] = True

    # a tensor must keep at least one channel: keep one removable set as a zeroed placeholder
    placeholder = torch.zeros(sets, dtype=torch.bool)
    sizes = torch.tensor([channels.ids.numel() for channels in values], dtype=torch.int64)
    owner = torch.repeat_interleave(torch.arange(len(values)), sizes)
    kept = torch.zeros(len(values), dtype=torch.int64).index_add_(0, owner, (~removed[value_sets]).long())
    for index in ((kept == 0) & (sizes > 0)).nonzero().flatten().tolist():
        channels = values[index]  # in order: an earlier placeholder may already have saved this one
        if bool(removed[labels[channels.ids]].all()):
            first = labels[channels.ids[0]]
            removed[first] = False
            placeholder[first] = True
    return Removal(labels, removed, placeholder, reason, constant, blocker, messages, iterations)
