"""Compaction benchmark: speed, size, yield against an independent oracle, and two peers, in one run.

Models: VGG-16-bn (CIFAR form: torchvision's features, global pooling, one linear layer, as in the
DNNShifter and lottery-ticket papers), ResNet-18, ResNet-50 and MobileNetV2, 10 classes, input
1x3x32x32, at densities 0.8^k, k = 3, 6, ..., 24 (``--quick``: ResNet-18 at k = 6, 15, 24).

Masks (:func:`realistic_masks`), meant to look like IMP's after training rather than like pruning a
fresh initialisation (whose global magnitude order empties the widest layers entirely from k = 12):

1. batch-norm statistics and affine drawn as after training (mean ~ N(0, 0.5), var ~ U(0.5, 2),
   scale ~ U(0.5, 1.5), shift ~ N(0, 0.2));
2. unstructured zeros: global magnitude pruning of the other convolutions' weights to ``d = 0.8^k``,
   except that each layer keeps at least its largest ``min(2%, d / 4)`` weights, and at least 64 of
   them (IMP keeps small layers such as the first convolution far denser than wide ones); the final
   linear layer and depthwise convolutions are pruned at half the rate, to 0.9^k each, as the
   lottery-ticket experiments do for the output layer (the classifier's initialisation is 10x
   smaller than the convolutions', and a depthwise filter has 9 weights: a global order over fresh
   weights would empty both long before any trained network loses them);
3. dead filters, concentrated in the wide layers: each convolution with one group loses a random
   ``0.6 * (k / 24) * (its filters / the widest layer's filters)`` of its filters;
4. the batch-norm affine of every filter left all zero is masked too, as the IMP callback does.
   (The original rule's error is also measured with this step left out, see below.)

Measured per model and density, all in the same process so that every ratio is side by side:

- ``compact()``: median time, and its ratio to a ``copy.deepcopy`` of the model timed alongside;
  parameter and MAC ratios dense / compacted; exactness error;
- yield: filters and neurons removed / removable, where "removable" comes from :func:`oracle`, an
  independent fixed point that *measures* activations and weights instead of reasoning about them;
- the original DNNShifter rule (:func:`lightning_shifter.compaction.original.compact_original`): its
  parameter ratio, ours / its (both counted with batch-norms fused into the convolutions), and its
  output error, on these masks and on the same masks without batch-norm masking (DNNShifter's own
  IMP leaves dead filters' batch-norm shift in place, so its dropped filters were not zero);
- Torch-Pruning pruning exactly the channel indices our compaction removed: time (dependency graph
  and pruning) and output error (it does not fold constants into the next layer's bias).

Targets (DESIGN.md section 5): ResNet-18 < 100 ms and < 5x deepcopy; yield 100% with zero error;
ours / original >= 1.8x below 4% density.

Run: ``python bench/compaction.py [--quick] [--models resnet18,...] [--ks 3,24] [--repeats 5]
[--threads N]``; writes ``bench/results/compaction.json`` (``--out`` to change). On a shared machine
use ``--threads 1``: with several threads, other processes stall torch's thread pool and single
runs take seconds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import operator
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch_pruning as tp
import torchvision
from rich.console import Console
from rich.table import Table
from torch import Tensor, fx, nn
from torch.fx.experimental.optimization import fuse
from torch.fx.passes.shape_prop import ShapeProp

import lightning_shifter.compaction as compaction
from lightning_shifter.compaction import compact
from lightning_shifter.compaction.graph import analyse
from lightning_shifter.compaction.original import compact_original
from lightning_shifter.compaction.removal import decide

KS = tuple(range(3, 25, 3))
QUICK = {"models": ("resnet18",), "ks": (6, 15, 24)}
FLOOR, FLOOR_WEIGHTS, DEAD = 0.02, 64, 0.6  # per-layer floors; dead-filter fraction of the widest layer at k=24
SHAPE = (1, 3, 32, 32)


def vgg16_bn_cifar() -> nn.Module:
    model = torchvision.models.vgg16_bn(num_classes=10)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(512, 10)
    return model


MODELS: dict[str, Callable[[], nn.Module]] = {
    "vgg16_bn": vgg16_bn_cifar,
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "resnet50": lambda: torchvision.models.resnet50(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
}


# -- masks ---------------------------------------------------------------------------------------
def _magnitude_masks(weights: list[Tensor], density: float) -> list[Tensor]:
    """Global magnitude masks to ``density`` where every layer keeps at least its top ``min(FLOOR, d/4)``
    fraction and its top ``FLOOR_WEIGHTS`` weights."""
    magnitudes = [w.detach().abs().flatten() for w in weights]
    floors = [max(math.ceil(min(FLOOR, density / 4) * m.numel()), min(FLOOR_WEIGHTS, m.numel())) for m in magnitudes]
    budget = round(density * sum(m.numel() for m in magnitudes))
    floored: set[int] = set()
    while True:  # layers that global magnitude would take below their floor keep the floor instead
        free = [i for i in range(len(weights)) if i not in floored]
        if not free:
            break
        pool = torch.cat([magnitudes[i] for i in free])
        keep = min(max(1, budget - sum(floors[i] for i in floored)), pool.numel())
        threshold = pool.kthvalue(pool.numel() - keep + 1).values
        newly = {i for i in free if int((magnitudes[i] >= threshold).sum()) < floors[i]}
        if not newly:
            break
        floored |= newly
    masks = []
    for i, m in enumerate(magnitudes):
        if i in floored:
            mask = torch.zeros_like(m, dtype=torch.bool)
            mask[m.topk(floors[i]).indices] = True
        else:
            mask = m >= threshold
        masks.append(mask.view_as(weights[i]))
    return masks


def realistic_masks(model: nn.Module, k: int, seed: int, mask_norms: bool = True) -> None:
    """IMP-like sparsity at density 0.8^k, in place (the rule is in the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
        # the classifier and grouped (depthwise) convolutions are pruned at half the rate
        slow = [m for m in layers if m is layers[-1] or getattr(m, "groups", 1) > 1]
        hidden = [m for m in layers if all(m is not s for s in slow)]
        for layer, mask in zip(hidden, _magnitude_masks([m.weight for m in hidden], 0.8**k)):
            layer.weight.mul_(mask)
        for layer in slow:
            layer.weight.mul_(_magnitude_masks([layer.weight], 0.9**k)[0])
        modules = dict(model.named_modules())
        convs = [(node, modules[node.target]) for node in fx.symbolic_trace(model).graph.nodes
                 if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d)]
        widest = max(conv.out_channels for _, conv in convs)
        for node, conv in convs:
            if conv.groups != 1:
                continue
            fraction = DEAD * (k / 24) * (conv.out_channels / widest)
            conv.weight[torch.rand(conv.out_channels, generator=g) < fraction] = 0
            rows = (conv.weight.flatten(1) == 0).all(1)  # dead filters, and those pruned to nothing
            users = list(node.users)
            norm = modules.get(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None
            if mask_norms and isinstance(norm, nn.BatchNorm2d):
                norm.weight[rows] = 0
                norm.bias[rows] = 0


# -- the independent oracle ----------------------------------------------------------------------
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_CHANNELWISE = (nn.BatchNorm2d, nn.Dropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


class _Dependence(fx.Interpreter):
    """Runs a model on an all-ones input with every weight replaced by its magnitude, every bias and
    batch-norm shift by zero, and activations by the identity, and every result clipped to 0 or 1.
    Nothing can cancel or overflow, so a value is 1 exactly where some path of nonzero weights links
    it to the input: 0 means it does not depend on the input at all (it is a constant, whatever the
    activations do)."""

    def __init__(self, gm: fx.GraphModule, readers: set[str]):
        super().__init__(gm)
        self.readers, self.seen = readers, {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        return (result > 0).to(result.dtype) if isinstance(result, Tensor) and result.is_floating_point() else result

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        module, x = self.fetch_attr(target), args[0]
        if target in self.readers:
            self.seen[target] = x
        if isinstance(module, nn.Conv2d):
            return nn.functional.conv2d(x, module.weight.abs(), None, module.stride, module.padding,
                                        module.dilation, module.groups)
        if isinstance(module, nn.Linear):
            return nn.functional.linear(x, module.weight.abs())
        if isinstance(module, nn.BatchNorm2d):
            scale = (module.weight / (module.running_var + module.eps).sqrt()).abs()
            return x * scale[:, None, None]
        if isinstance(module, _ACTIVATIONS):
            return x
        return super().call_module(target, args, kwargs)


def _taps_in_use(layer: nn.Module, in_shape: torch.Size) -> tuple[Tensor, bool]:
    """Measured with the layer's own convolution on an input of ones: which kernel taps ever touch
    the input rather than padding, and whether every output position touches all of those."""
    if isinstance(layer, nn.Linear):
        return torch.ones(1, dtype=torch.bool), True
    count = math.prod(layer.kernel_size)
    one_hot = torch.eye(count).view(count, 1, *layer.kernel_size)
    hits = nn.functional.conv2d(torch.ones(1, 1, *in_shape[2:]), one_hot, stride=layer.stride,
                                padding=layer.padding, dilation=layer.dilation)[0].flatten(1)
    taps = hits.amax(1) > 0
    return taps, bool((hits[taps] == 1).all())


def _columns(x: Tensor) -> Tensor:
    """[input channel (feature, for 2-d inputs), everything else]."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def oracle(model: nn.Module, example: Tensor) -> tuple[dict[str, Tensor], float]:
    """Per layer, which filters (neurons) are removable, found without our analysis; and the error
    of the model with all of them removed (zeroed, constants moved into the next bias).

    Channel positions are tracked through the fx graph (additions and depthwise convolutions tie
    positions together: such a set goes as a whole). Then, to a fixed point, on a copy: call a set
    removable when every convolution or linear layer reading it reads, in each of its input
    channels, zero, or a constant it absorbs exactly into its bias, or reads it with all-zero
    weights. A value is zero or constant when it depends on no input (:class:`_Dependence`) and is
    zero, or the same everywhere, on a random batch. A linear layer absorbs any constant; a
    convolution one that is uniform over positions, when each output position sees the same kernel
    taps; taps that only ever meet zero padding at this input size (a 3x3 convolution of a 1x1 map
    uses its centre only) read nothing (:func:`_taps_in_use`). Removing a set moves its constants
    into the readers' bias and zeroes the readers' columns and the producers' rows in the copy,
    which can make more sets removable in the next round.
    """
    work = fx.symbolic_trace(copy.deepcopy(model).eval())
    ShapeProp(work).propagate(example)
    modules = dict(work.named_modules())
    ids: dict[fx.Node, Tensor] = {}
    parent: list[int] = []

    def fresh(count: int) -> Tensor:
        parent.extend(range(len(parent), len(parent) + count))
        return torch.arange(len(parent) - count, len(parent))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producers: list[tuple[str, Tensor]] = []  # (layer, channel id of each output row)
    readers: list[tuple[str, Tensor]] = []  # (layer, channel id of each input column)
    taps: dict[str, tuple[Tensor, bool]] = {}  # reader -> (taps in use, every position sees them all)
    pinned: list[Tensor] = []
    for node in work.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if node.op == "placeholder":
            ids[node] = fresh(node.meta["tensor_meta"].shape[1])
            pinned.append(ids[node])
        elif node.op == "output":
            pinned.append(ids[node.args[0]])
        elif isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1:
            ids[node] = ids[node.args[0]]  # depthwise: each filter belongs to its channel
            producers.append((node.target, ids[node]))
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and getattr(module, "groups", 1) == 1:
            readers.append((node.target, ids[node.args[0]]))
            taps[node.target] = _taps_in_use(module, node.args[0].meta["tensor_meta"].shape)
            ids[node] = fresh(module.weight.shape[0])
            producers.append((node.target, ids[node]))
        elif isinstance(module, _ACTIVATIONS + _CHANNELWISE) or node.target is nn.functional.adaptive_avg_pool2d:
            ids[node] = ids[node.args[0]]
        elif isinstance(module, nn.Flatten) or node.target is torch.flatten:
            source = node.args[0]
            ids[node] = ids[source].repeat_interleave(source.meta["tensor_meta"].shape[2:].numel())
        elif node.target in (operator.add, operator.iadd, torch.add):
            a, b = ids[node.args[0]], ids[node.args[1]]
            for i, j in zip(a.tolist(), b.tolist()):
                parent[find(i)] = find(j)
            ids[node] = a
        else:
            raise NotImplementedError(f"the oracle does not know {node.format_node()}")
    root = torch.tensor([find(i) for i in range(len(parent))])
    is_pinned = torch.zeros(len(parent), dtype=torch.bool)
    for p in pinned:
        is_pinned[root[p]] = True

    probe = torch.randn((4, *example.shape[1:]), generator=torch.Generator().manual_seed(1))
    seen: dict[str, Tensor] = {}
    for name, _ in readers:  # cloned: in-place activations may change a reader's input later
        modules[name].register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].clone()))
    with torch.no_grad():
        reference = work(probe)
    removed = torch.zeros(len(parent), dtype=torch.bool)
    while True:
        dependence = _Dependence(work, set(taps))
        with torch.no_grad():
            work(probe)
            dependence.run(torch.ones_like(example))
        blocked = is_pinned.clone()
        columns: list[tuple[nn.Module, Tensor, Tensor, Tensor, Tensor]] = []
        for name, column_ids in readers:
            layer, values = modules[name], _columns(seen[name])
            fixed = (_columns(dependence.seen[name]) == 0).all(1)
            zero = fixed & (values == 0).all(1)
            in_use, absorbable = taps[name]
            uniform = (values == values[:, :1]).all(1)  # over the batch, and positions for a convolution
            constant = zero | (fixed & uniform & absorbable)
            weight = layer.weight.detach()
            weight = (weight.flatten(2) if weight.dim() > 2 else weight.unsqueeze(2))[:, :, in_use]
            unused = weight.abs().sum((0, 2)) == 0
            blocked[root[column_ids[~(constant | unused)]]] = True
            columns.append((layer, column_ids, torch.where(zero, 0.0, values[:, 0]), ~unused, weight.sum(2)))
        newly = ~blocked & ~removed
        newly[root != torch.arange(len(parent))] = False  # decided on each set's representative
        newly = newly[root]
        if not newly.any():
            break
        removed |= newly
        with torch.no_grad():
            for layer, column_ids, value, read, per_column in columns:
                gone = newly[column_ids]
                fold = gone & read
                if fold.any():  # the constant such a column carried moves into the bias
                    if layer.bias is None:
                        layer.bias = nn.Parameter(torch.zeros(per_column.shape[0]))
                    layer.bias += per_column[:, fold] @ value[fold]
                layer.weight[:, gone] = 0
            for name, row_ids in producers:
                layer = modules[name]
                layer.weight[newly[row_ids]] = 0
                if layer.bias is not None:
                    layer.bias[newly[row_ids]] = 0
    with torch.no_grad():
        error = float((work(probe) - reference).abs().max() / reference.abs().max().clamp(min=1))
    return {name: removed[row_ids] for name, row_ids in producers}, error


# -- peers ---------------------------------------------------------------------------------------
def our_removed_indices(model: nn.Module, example: Tensor) -> dict[str, Tensor]:
    """The output channels compact() removes, per layer name (first pass of its analysis)."""
    gm = compaction._trace(compaction._working_copy(model))
    meta, _ = compaction._record(gm, (example,))
    graph = analyse(gm, meta)
    removal = decide(graph)
    return {
        str(layer.node.target): removal.gone(layer.out_ids).nonzero().flatten()
        for layer in graph.layers if isinstance(layer.module, (nn.Conv2d, nn.Linear))
    }


def torch_pruning_peer(model: nn.Module, example: Tensor, removed: dict[str, Tensor]) -> tuple[float, nn.Module]:
    """Torch-Pruning removing the same channels: seconds (dependency graph + pruning), result."""
    pruned = copy.deepcopy(model)
    names = {module: name for name, module in pruned.named_modules()}
    start = time.perf_counter()
    graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=example)
    # one group per coupled channel set; each is pruned once, through its root layer
    roots = [(g[0].dep.target.module, g[0].dep.handler) for g in graph.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear])]
    for module, handler in roots:
        indices = removed.get(names[module])
        if indices is not None and indices.numel():
            graph.get_pruning_group(module, handler, indices.tolist()).prune()
    return time.perf_counter() - start, pruned


# -- measurement ---------------------------------------------------------------------------------
def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def relative_error(model: nn.Module, other: nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        expected = model(x)
        return float((other(x) - expected).abs().max() / expected.abs().max().clamp(min=1))


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure(name: str, k: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(k)
    model = MODELS[name]().eval()
    realistic_masks(model, k, seed=k)
    example = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    check = torch.randn((8, *SHAPE[1:]), generator=torch.Generator().manual_seed(2))
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    result = compact(model, example)  # also the warm-up
    runs = []
    copies = []
    for _ in range(repeats):  # interleaved, so that both see the same machine load
        runs.append(compact(model, example).report)
        copies.append(median_seconds(lambda: copy.deepcopy(model), 1))
    ours, deepcopy = statistics.median(r.seconds for r in runs), statistics.median(copies)
    report = result.report
    removed = sum(report.removed().values())
    removable_rows, oracle_error = oracle(model, example)
    indices = our_removed_indices(model, example)
    ours_rows = {name: torch.zeros_like(rows).index_fill_(0, indices[name], True) for name, rows in removable_rows.items()}
    removable = sum(int(rows.sum()) for rows in removable_rows.values())
    missed = sum(int((rows & ~ours_rows[name]).sum()) for name, rows in removable_rows.items())
    beyond = sum(int((ours_rows[name] & ~rows).sum()) for name, rows in removable_rows.items())

    original = compact_original(model, example)
    ours_fused = params(fuse(result.module))
    unmasked = MODELS[name]().eval()
    realistic_masks(unmasked, k, seed=k, mask_norms=False)
    unmasked_ours = compact(unmasked, example)

    tp_seconds, tp_model = torch_pruning_peer(model, example, indices)
    return {
        "model": name,
        "k": k,
        "density": 0.8**k,
        "measured_density": sum(int((w != 0).sum()) for w in weights) / sum(w.numel() for w in weights),
        "compact_ms": ours * 1e3,
        "deepcopy_ms": deepcopy * 1e3,
        "time_ratio_to_deepcopy": ours / deepcopy,
        "timings_ms": {key: 1e3 * statistics.median(r.timings.get(key, 0.0) for r in runs) for key in report.timings},
        "param_ratio": report.params_before / report.params_after,
        "mac_ratio": report.macs_before / report.macs_after,
        "max_abs_error": report.max_abs_error,
        "error_on_check_batch": relative_error(model, result.module, check),
        "removed": report.removed(),
        "placeholders": report.placeholders,
        "kept_constant": report.kept_constant,
        "removable": removable,
        "yield": removed / removable if removable else 1.0,
        "missed": missed,  # removable by the oracle, kept by us (placeholders included)
        "removed_beyond_oracle": beyond,  # removed by us, not removable by the oracle: must be 0
        "oracle_error": oracle_error,
        "original": {
            "param_ratio": params(model) / params(original),
            "ours_over_original": params(original) / ours_fused,  # both with batch-norm fused
            "error": relative_error(model, original, check),
            "error_without_norm_masking": relative_error(unmasked, compact_original(unmasked, example), check),
            "ours_error_without_norm_masking": relative_error(unmasked, unmasked_ours.module, check),
        },
        "torch_pruning": {
            "ms": tp_seconds * 1e3,
            "time_ratio_to_ours": tp_seconds / ours,
            "error": relative_error(model, tp_model, check),
            "params_equal_ours": params(tp_model) == report.params_after,
        },
    }


def table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="compaction, 1x3x32x32 (times: medians; ratios from the same run)")
    columns = ("model", "k", "density", "ms", "x deepcopy", "params /", "MACs /", "removed", "removable",
               "yield", "error", "orig params /", "ours/orig", "orig err", "orig err (BN unmasked)",
               "TP ms", "TP err")
    for column in columns:
        t.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        o, p = r["original"], r["torch_pruning"]
        t.add_row(
            r["model"], str(r["k"]), f"{r['density']:.4f}", f"{r['compact_ms']:.1f}",
            f"{r['time_ratio_to_deepcopy']:.2f}", f"{r['param_ratio']:.1f}", f"{r['mac_ratio']:.1f}",
            str(sum(r["removed"].values())), str(r["removable"]), f"{r['yield']:.1%}",
            f"{r['error_on_check_batch']:.0e}", f"{o['param_ratio']:.1f}", f"{o['ours_over_original']:.2f}",
            f"{o['error']:.0e}", f"{o['error_without_norm_masking']:.0e}", f"{p['ms']:.0f}", f"{p['error']:.0e}",
        )
    return t


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-18 at k = 6, 15, 24 only (CI smoke run)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--ks", default=",".join(map(str, KS)), help="exponents k of the densities 0.8^k")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "compaction.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = QUICK["models"] if args.quick else tuple(args.models.split(","))
    unknown = set(models) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    ks = QUICK["ks"] if args.quick else tuple(int(k) for k in args.ks.split(","))
    warnings.filterwarnings("ignore", module="torch_pruning")
    rows = []
    console = Console(width=220)
    for name in models:
        for k in ks:
            rows.append(measure(name, k, args.repeats))
            console.log(f"{name} k={k}: {rows[-1]['compact_ms']:.1f} ms, yield {rows[-1]['yield']:.1%}")
    console.print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "input_shape": list(SHAPE), "threads": torch.get_num_threads(), "quick": args.quick, "rows": rows,
    }, indent=2))
    return rows


if __name__ == "__main__":
    main()
