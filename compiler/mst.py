"""MST compression: order each binary layer's output channels along a minimum spanning tree.

After Vo et al., "MST-compression: Compressing and Accelerating Binary Neural Networks with
Minimum Spanning Tree" (ICCV 2023). Per binary layer, the output channels form a complete graph
whose edge weight is the Hamming distance ``d`` of two weight rows (K bits each). A channel either
computes its popcount in full (a *root*, K XNORs) or from its parent in the tree with ``d``
XNORs over the positions D where the two rows differ::

    P_child = P_parent + d - 2 * popcount(XNOR(x_D, w_parent,D))

A *complement* edge computes a child from the inverse of its parent (``P = K - P_parent``
first), at distance ``K - d``; it is used only where ``K - d < d``. The cost of a layer is
``xnor_mst = K * roots + weight`` (``weight`` = sum of tree-edge distances, complement edges at
their complemented distance) instead of ``xnor_dense = channels * K``. Tree depth becomes
pipeline depth in hardware, so the tree is rooted at its center and, among minimum spanning
trees, shallow ones are preferred.

The MST is computed on a graph with a *virtual root*: every channel is joined to it at cost K
(computing it in full). The MST of that graph is exactly the cheapest set of roots and edges, so
the cost model stays general: with complement edges every distance is at most K/2 and one root
per layer suffices; without them, a channel whose every distance is K (or more) stays a root.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir import BinaryConv, BinaryDense, DataflowGraph, ScoreLayer

__all__ = ["MSTResult", "hamming_matrix", "effective_distance", "mst_tree", "layer_tree",
           "analyse_layer", "analyse_graph", "OrderChannelsByMST", "tree_attr"]

def hamming_matrix(packed: np.ndarray, k: int) -> np.ndarray:
    """Return the Hamming distances between all rows of a packed bit matrix.

    Parameters
    ----------
    packed
        ``(C, ceil(k / 8))`` uint8, rows packed little-endian as in the IR (``pack_bits``).
    k
        Number of valid bits per row; bits past ``k`` are ignored.

    Returns
    -------
    numpy.ndarray
        ``(C, C)`` int64, symmetric, zero diagonal.
    """
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise ValueError(f"packed weights must be a 2-D uint8 array, not {packed.dtype} "
                         f"of shape {packed.shape}")
    k = int(k)
    nbytes = (k + 7) // 8
    if k < 1 or packed.shape[1] < nbytes:
        raise ValueError(f"packed rows of {packed.shape[1]} bytes cannot hold k={k} bits")
    # 0/1 matrix product: d_ij = n_i + n_j - 2 * (common ones); exact in float32 below 2**24
    dtype = np.float32 if k < 1 << 24 else np.float64
    bits = np.unpackbits(packed[:, :nbytes], axis=1, count=k, bitorder="little").astype(dtype)
    ones = bits.sum(axis=1, dtype=np.int64)
    common = np.rint(bits @ bits.T).astype(np.int64)
    out = ones[:, None] + ones[None, :] - 2 * common
    np.fill_diagonal(out, 0)
    return out


def effective_distance(dist: np.ndarray, k: int, complement: bool = True
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Return the edge costs and the complement flags of a Hamming distance matrix.

    ``cost = min(d, k - d)`` and ``flag = k - d < d`` with ``complement``, else ``cost = d`` and
    no flags. Both are ``(C, C)``.
    """
    dist = np.asarray(dist, dtype=np.int64)
    if complement:
        flip = (k - dist) < dist
        return np.where(flip, k - dist, dist), flip
    return dist.copy(), np.zeros(dist.shape, dtype=bool)


@dataclass(frozen=True)
class MSTResult:
    """A spanning forest over one layer's output channels.

    Attributes
    ----------
    parent
        ``(C,)`` int64: each channel's parent, -1 for a root.
    complement
        ``(C,)`` bool: the edge to the parent uses the parent's inverse (cost ``k - d``).
    depth
        ``(C,)`` int64: edges from the channel up to its root (0 for a root).
    roots
        Root channels in increasing order.
    weight
        Sum of the tree-edge costs (complement edges at ``k - d``), roots excluded.
    order
        Every channel once, parents before children (breadth first from the roots).
    k
        Bits per weight row.
    """

    parent: np.ndarray
    complement: np.ndarray
    depth: np.ndarray
    roots: list
    weight: int
    order: list
    k: int

    @property
    def max_depth(self) -> int:
        return int(self.depth.max()) if len(self.depth) else 0

    @property
    def xnor_mst(self) -> int:
        """XNORs per input vector: ``k`` per root plus one per unit of edge cost."""
        return self.k * len(self.roots) + self.weight


# -- tree helpers -----------------------------------------------------------------------------
def _children(parent: np.ndarray) -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in range(len(parent))]
    for v, p in enumerate(parent.tolist()):
        if p >= 0:
            kids[p].append(v)
    return kids


def _bfs(parent: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Breadth-first order from the roots (ascending) and each node's depth."""
    kids = _children(parent)
    depth = np.zeros(len(parent), dtype=np.int64)
    order = [v for v in range(len(parent)) if parent[v] < 0]
    i = 0
    while i < len(order):
        u = order[i]
        for v in kids[u]:
            depth[v] = depth[u] + 1
            order.append(v)
        i += 1
    return order, depth


def _adjacency(parent: np.ndarray) -> list[list[int]]:
    adj: list[list[int]] = [[] for _ in range(len(parent))]
    for v, p in enumerate(parent.tolist()):
        if p >= 0:
            adj[p].append(v)
            adj[v].append(p)
    return adj


def _far(adj: list[list[int]], start: int) -> tuple[int, dict[int, int]]:
    """Farthest node from ``start`` (smallest index on ties) and the BFS predecessor map."""
    prev = {start: -1}
    frontier = [start]
    while frontier:
        nxt = []
        for u in frontier:
            for v in adj[u]:
                if v not in prev:
                    prev[v] = u
                    nxt.append(v)
        if not nxt:
            return min(frontier), prev
        frontier = nxt
    return start, prev


def _recenter(parent: np.ndarray) -> np.ndarray:
    """Re-root every tree of a forest at its center (a node of minimum eccentricity).

    The edge set is unchanged. Of two centers, the smaller channel index is chosen.
    """
    adj = _adjacency(parent)
    new_parent = parent.copy()
    seen = np.zeros(len(parent), dtype=bool)
    for r in np.flatnonzero(parent < 0).tolist():
        if seen[r]:
            continue
        a, _ = _far(adj, r)
        b, prev = _far(adj, a)
        path = [b]
        while prev[path[-1]] >= 0:
            path.append(prev[path[-1]])          # b ... a
        length = len(path) - 1
        centers = {path[length // 2], path[(length + 1) // 2]}
        center = min(centers)
        # orient the component away from the center
        new_parent[center] = -1
        stack = [center]
        seen[center] = True
        while stack:
            u = stack.pop()
            for v in adj[u]:
                if not seen[v]:
                    seen[v] = True
                    new_parent[v] = u
                    stack.append(v)
    return new_parent


def _prim(cost: np.ndarray, k: int, start: int, max_depth: int | None) -> np.ndarray:
    """Dense Prim's algorithm over the channels plus a virtual root at cost ``k``.

    Every channel starts with key ``k`` (becoming a root) and the node picked first is
    ``start``. A key is lowered by a strictly cheaper edge, or moved to a parent of smaller depth
    at equal cost (the tie-break that favours shallow trees). With ``max_depth``, only channels
    of depth below it can take children. Among equal keys the smallest index is picked next.
    Without ``max_depth`` the result is an exact minimum spanning forest of the augmented graph.
    """
    c = cost.shape[0]
    inf = np.iinfo(np.int64).max
    key = np.full(c, k, dtype=np.int64)
    par = np.full(c, -1, dtype=np.int64)
    pdepth = np.full(c, -1, dtype=np.int64)        # depth of the current parent (-1: virtual)
    depth = np.zeros(c, dtype=np.int64)
    done = np.zeros(c, dtype=bool)
    u = start
    for _ in range(c):
        done[u] = True
        depth[u] = 0 if par[u] < 0 else depth[par[u]] + 1
        if max_depth is None or depth[u] < max_depth:
            row = cost[u]
            du = depth[u]
            better = ~done & ((row < key) | ((row == key) & (du < pdepth)))
            key[better] = row[better]
            par[better] = u
            pdepth[better] = du
        masked = np.where(done, inf, key)
        u = int(np.argmin(masked))
        if done[u]:
            break
    return par


def _improve(cost: np.ndarray, k: int, parent: np.ndarray, max_depth: int) -> np.ndarray:
    """Lower the weight of a depth-bounded forest by re-parenting whole subtrees.

    Each sweep finds, for every channel, the parent that saves the most cost while keeping every
    depth at most ``max_depth`` (every current edge costs at most ``k``, so turning a channel
    into a root never saves), and applies the moves in order of saving as long as they touch
    nothing an earlier move of the sweep changed. Stops when no move saves anything.
    Deterministic.
    """
    c = len(parent)
    parent = parent.copy()
    big = np.iinfo(np.int64).max
    idx = np.arange(c)
    for _ in range(4 * c):
        order, depth = _bfs(parent)
        kids = _children(parent)
        height = np.zeros(c, dtype=np.int64)          # longest path down from a node
        for v in reversed(order):
            if parent[v] >= 0:
                height[parent[v]] = max(height[parent[v]], height[v] + 1)
        tin = np.zeros(c, dtype=np.int64)
        tout = np.zeros(c, dtype=np.int64)
        clock = 0
        for r in [v for v in order if parent[v] < 0]:
            stack = [(r, False)]
            while stack:
                v, closing = stack.pop()
                if closing:
                    tout[v] = clock
                    continue
                tin[v] = clock
                clock += 1
                stack.append((v, True))
                stack.extend((w, False) for w in reversed(kids[v]))
        current = np.where(parent >= 0, cost[idx, np.maximum(parent, 0)], k)
        inside = (tin[None, :] >= tin[:, None]) & (tin[None, :] < tout[:, None])   # [v, u]
        ok = ((depth[None, :] + 1 + height[:, None]) <= max_depth) & ~inside
        cand = np.where(ok, cost, big)
        target = np.argmin(cand, axis=1)
        gain = np.where(ok.any(axis=1), current - cand[idx, target], 0)
        movers = [int(v) for v in np.argsort(-gain, kind="stable") if gain[v] > 0]
        if not movers:
            break
        by_tin = np.argsort(tin)
        dirty = np.zeros(c, dtype=bool)
        for v in movers:
            u = int(target[v])
            if dirty[v] or dirty[u]:
                continue
            dirty[by_tin[tin[v]:tout[v]]] = True            # v's subtree changes depth
            for w in (u, int(parent[v])):                    # heights change above both ends
                while w >= 0 and not dirty[w]:
                    dirty[w] = True
                    w = int(parent[w])
            parent[v] = u
    parent = _recenter(parent)
    if int(_bfs(parent)[1].max()) > max_depth:               # cannot happen; keep the invariant
        raise RuntimeError("depth bound broken while improving the MST")
    return parent


def _result(parent: np.ndarray, cost: np.ndarray, flip: np.ndarray, k: int) -> MSTResult:
    order, depth = _bfs(parent)
    idx = np.arange(len(parent))
    has = parent >= 0
    weight = int(cost[idx[has], parent[has]].sum())
    comp = np.zeros(len(parent), dtype=bool)
    comp[has] = flip[idx[has], parent[has]]
    roots = [int(v) for v in np.flatnonzero(~has)]
    return MSTResult(parent=parent.astype(np.int64), complement=comp, depth=depth, roots=roots,
                     weight=weight, order=[int(v) for v in order], k=int(k))


def mst_tree(dist: np.ndarray, k: int, *, complement: bool = True,
             max_depth: int | None = None, restarts: int = 4) -> MSTResult:
    """Return a minimum spanning tree of minimum depth over one layer's output channels.

    Parameters
    ----------
    dist
        ``(C, C)`` Hamming distances between weight rows (see :func:`hamming_matrix`).
    k
        Bits per row: the cost of a root, and the complement distance ``k - d``.
    complement
        Allow complement edges (cost ``min(d, k - d)``).
    max_depth
        Bound the tree depth (``None``: no bound). When the free tree is deeper, the bound is met
        by a depth-constrained Prim (a channel may only take children while its depth is below
        the bound; a channel that no allowed node reaches more cheaply than ``k`` becomes an
        extra root) followed by a local search that re-parents whole subtrees to cheaper,
        shallow-enough parents; it is run from the free tree's center and from the
        ``restarts`` channels with the smallest total distance (the best star centers), and
        the cheapest result is kept. This trades a little weight for depth; the result is not
        guaranteed minimal (bounded-depth MST is NP-hard).
    restarts
        Unconstrained Prim runs: each later run starts at the center of the previous run's
        largest tree, until a start repeats.

    Returns
    -------
    MSTResult
        Without ``max_depth``: an exact minimum spanning forest of the channels plus a virtual
        root at cost ``k`` (so ``weight + k * roots`` is minimal), each tree rooted at its center
        (its depth is the minimum over all choices of root). Where equal costs allow several
        minimum trees, Prim prefers the parent of smaller depth at equal cost and the tree of
        smallest depth over the restarts is kept (ties: the earlier run); this is a
        deterministic heuristic towards shallow trees, not a guaranteed minimum-depth MST.
    """
    dist = np.asarray(dist)
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist must be a square matrix, not of shape {dist.shape}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be positive, not {k}")
    if max_depth is not None and (int(max_depth) != max_depth or max_depth < 0):
        raise ValueError(f"max_depth must be a non-negative integer or None, not {max_depth!r}")
    c = dist.shape[0]
    cost, flip = effective_distance(dist, k, complement)
    if c == 0:
        return _result(np.zeros(0, dtype=np.int64), cost, flip, k)
    best = _search(cost, flip, k, [0], None, restarts)
    if max_depth is not None and best.max_depth > max_depth:
        # depth-bounded runs start at the free tree's center and at the best star centers
        stars = np.argsort(cost.sum(axis=1), kind="stable")[:max(1, restarts)].tolist()
        starts = list(dict.fromkeys([_main_root(best), *stars]))
        best = _search(cost, flip, k, starts, int(max_depth), 1)
    return best


def _search(cost: np.ndarray, flip: np.ndarray, k: int, starts: list[int],
            max_depth: int | None, restarts: int) -> MSTResult:
    """Best tree (fewest XNORs, then smallest depth, then earliest) over Prim runs.

    Each start is run once; then, up to ``restarts`` runs in all per start, the next run starts
    at the root of the previous run's largest tree (its center), until a start repeats.
    """
    best = None
    tried: set[int] = set()
    for first in starts:
        start = first
        for _ in range(max(1, restarts)):
            if start in tried:
                break
            tried.add(start)
            parent = _recenter(_prim(cost, k, start, max_depth))
            if max_depth is not None:
                parent = _improve(cost, k, parent, max_depth)
            res = _result(parent, cost, flip, k)
            if best is None or (res.xnor_mst, res.max_depth) < (best.xnor_mst, best.max_depth):
                best = res
            start = _main_root(res)
    return best


def _main_root(res: MSTResult) -> int:
    """The root of the largest tree (the smallest such root on ties)."""
    return res.roots[int(np.argmax([_subtree_size(res, r) for r in res.roots]))]


def _subtree_size(res: MSTResult, root: int) -> int:
    kids = _children(res.parent)
    n, stack = 0, [root]
    while stack:
        n += 1
        stack.extend(kids[stack.pop()])
    return n


# -- analyses ---------------------------------------------------------------------------------
_MST_OPS = (BinaryDense, BinaryConv, ScoreLayer)


def _mst_candidate(op) -> bool:
    """Whether a stage gets an MST: a binary layer, but not one that streams popcounts to a
    residual join (``emit="popcount"``)."""
    return isinstance(op, _MST_OPS) and getattr(op, "emit", "bits") == "bits"


def layer_tree(op, *, complement: bool = True, max_depth: int | None = None) -> MSTResult:
    """Return the MST of a binary layer's output channels (any op with ``weights``, ``k``)."""
    return mst_tree(hamming_matrix(op.weights, op.k), op.k, complement=complement,
                    max_depth=max_depth)


def _summary(k: int, channels: int, tree: MSTResult) -> dict:
    return {"k": int(k), "channels": int(channels), "mst_weight": int(tree.weight),
            "depth": int(tree.max_depth), "roots": len(tree.roots),
            "complement": int(np.count_nonzero(tree.complement)),
            "xnor_dense": int(channels) * int(k), "xnor_mst": int(tree.xnor_mst)}


def analyse_layer(op, *, complement: bool = True, max_depth: int | None = None) -> dict:
    """Return the MST cost summary of one binary layer.

    Returns
    -------
    dict
        ``{k, channels, mst_weight, depth, roots, complement, xnor_dense, xnor_mst}``: the tree
        weight, its depth, the number of roots and of complement edges, and the XNORs per input
        vector without (``channels * k``) and with the tree (``k * roots + mst_weight``).
    """
    for name in ("weights", "k", "channels"):
        if not hasattr(op, name):
            raise TypeError(f"{type(op).__name__} has no {name!r}: MST analysis needs a binary "
                            "layer (BinaryDense, BinaryConv or ScoreLayer)")
    return _summary(op.k, op.channels, layer_tree(op, complement=complement,
                                                  max_depth=max_depth))


def _tree_from_attr(attr: dict, op) -> MSTResult:
    parent = np.asarray(attr["parent"], dtype=np.int64)
    return MSTResult(parent=parent, complement=np.asarray(attr["complement"], dtype=bool),
                     depth=np.asarray(attr["depth"], dtype=np.int64), roots=list(attr["roots"]),
                     weight=int(attr["weight"]), order=list(attr["order"]), k=int(op.k))


def analyse_graph(graph: DataflowGraph, *, complement: bool = True,
                  max_depth: int | None = None) -> dict:
    """Return the MST cost summary of every binary layer of a graph (the score layer included;
    popcount stages of residual blocks left out).

    A stage that carries an ``mst`` attribute (set by :class:`OrderChannelsByMST`) is summarised
    from it; other stages get a tree computed with ``complement`` and ``max_depth``.

    Returns
    -------
    dict
        ``{xnor_dense, xnor_mst, ratio, max_depth, layers}`` with ``ratio = xnor_dense /
        xnor_mst`` over all layers and ``layers`` a list of ``{name, k, channels, mst_weight,
        depth, roots, complement}`` in stream order. XNOR counts are per input vector.
    """
    layers = []
    dense = total = 0
    deepest = 0
    for name, op in graph:
        if not _mst_candidate(op):
            continue
        attr = graph.attrs(name).get("mst")
        if attr is not None:
            tree = _tree_from_attr(attr, op)
        else:
            tree = layer_tree(op, complement=complement, max_depth=max_depth)
        s = _summary(op.k, op.channels, tree)
        dense += s["xnor_dense"]
        total += s["xnor_mst"]
        deepest = max(deepest, s["depth"])
        layers.append({"name": name, **{key: s[key] for key in (
            "k", "channels", "mst_weight", "depth", "roots", "complement")}})
    return {"xnor_dense": int(dense), "xnor_mst": int(total),
            "ratio": float(dense / total) if total else 1.0, "max_depth": int(deepest),
            "layers": layers}


def tree_attr(tree: MSTResult) -> dict:
    """Return a tree as the ``mst`` node attribute (plain lists and ints, JSON-able)."""
    return {
        "parent": [int(v) for v in tree.parent],
        "complement": [bool(v) for v in tree.complement],
        "depth": [int(v) for v in tree.depth],
        "order": [int(v) for v in tree.order],
        "weight": int(tree.weight),
        "roots": [int(v) for v in tree.roots],
    }


class OrderChannelsByMST:
    """Attach an MST over output channels to every binary layer (node attribute ``mst``), but
    not to popcount stages (``emit="popcount"``), which feed a residual join.

    ``mst = {"parent", "complement", "depth", "order", "weight", "roots"}`` as plain lists and
    ints (see :class:`MSTResult`). The weights, thresholds and channel order stay as they are,
    so the graph computes the same values; hardware reads the tree from the attribute.

    Parameters
    ----------
    max_depth
        Bound on every tree's depth (pipeline depth), see :func:`mst_tree`.
    complement
        Allow complement edges.
    """

    name = "order_channels_by_mst"

    def __init__(self, max_depth: int | None = None, complement: bool = True):
        if max_depth is not None and (not isinstance(max_depth, (int, np.integer))
                                      or max_depth < 0):
            raise ValueError(f"max_depth must be a non-negative integer or None, "
                             f"not {max_depth!r}")
        self.max_depth = None if max_depth is None else int(max_depth)
        self.complement = bool(complement)

    def apply(self, graph: DataflowGraph) -> DataflowGraph:
        out = graph.copy()
        for name, op in graph:
            if not _mst_candidate(op):
                continue
            tree = layer_tree(op, complement=self.complement, max_depth=self.max_depth)
            out.attrs(name)["mst"] = tree_attr(tree)
        return out
