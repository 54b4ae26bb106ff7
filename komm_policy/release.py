"""Free a large object graph a few objects at a time instead of in one C call.

CPython frees an unreferenced tree of objects in one cascade of deallocations, and a
graph held in reference cycles in one collection that walks all of it; either holds the
interpreter lock for the whole graph (a 20,000-term condition: 50-180 ms on a 2-core
machine, during which the event loop answers nothing).  `release` does the same work as
Python code, which gives the lock up every switch interval:

1. walk the graph from `root` (`gc.get_referents`, containers only, not into modules,
   classes or module-level functions, which are never part of one policy set);
2. count, for each object walked, the references that come from inside the walk; an
   object with more references than that (and than the walk's own) is held from outside
   (a request still using it, a table the directory keeps), and so is everything it
   reaches: those stay untouched;
3. every other object is garbage: its references are cleared (dicts, lists, sets,
   instance dictionaries and slots, cells), which breaks its cycles, and the walk's own
   references are dropped a slice at a time, so each drop frees a handful of objects.

Only the garbage is changed; an object held from outside is never cleared.  Another
thread may take a reference meanwhile only through an object held from outside, which is
left alone with all it reaches.  This is the cycle collector's trial deletion, in Python
and in slices.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections import deque
from types import BuiltinFunctionType, CellType, FrameType, FunctionType, ModuleType
from typing import Any

from .gcpause import full_collections_paused

SLICE = 256
"""Objects whose walk references are dropped together (each frees about one object)."""


_SHARED_TYPES = frozenset({ModuleType, type, BuiltinFunctionType, FunctionType, dict})


def _boundary(obj: Any, module_dicts: set[int]) -> bool:
    """Objects shared by the whole process, not walked into."""
    if isinstance(obj, (ModuleType, type, BuiltinFunctionType)):
        return True
    if isinstance(obj, FunctionType):
        return "<locals>" not in obj.__qualname__ and id(obj.__globals__) in module_dicts
    return isinstance(obj, dict) and id(obj) in module_dicts


def release(box: list[Any]) -> int:
    """Free the graph of the one object in `box` (removed from it) in slices.  The box
    must hold the caller's only reference (`box = [tree]; del tree; release(box)`): a
    root still held elsewhere is left whole.  Returns the number of objects found to be
    garbage (walked, not held from outside); time linear in the graph's size.  Its own
    bookkeeping is a few flat lists of integers (no object per object walked, which the
    collector would have to walk in turn); full collections wait while it runs."""
    with full_collections_paused():
        order, starts, targets = _walk(box)
        count = len(order)
        internal = [0] * count
        for j in targets:
            internal[j] += 1
        live = [False] * count
        pending = []
        for j in range(count):
            # getrefcount's own argument and `order`'s reference: 2.
            if sys.getrefcount(order[j]) - 2 > internal[j]:
                live[j] = True
                pending.append(j)
        while pending:
            i = pending.pop()
            for j in targets[starts[i]:starts[i + 1]]:
                if not live[j]:
                    live[j] = True
                    pending.append(j)
        found = 0
        plans: dict[type, tuple[str, ...] | None] = {}
        for j in range(count):
            if live[j]:  # its outside holders keep it
                order[j] = None
            else:
                _clear(order[j], plans)
                found += 1
        for start in range(0, count, SLICE):  # walk order: parents before children
            order[start:start + SLICE] = [None] * min(SLICE, count - start)
        return found


def _walk(box: list[Any]) -> tuple[list[Any], list[int], list[int]]:
    """The tracked objects reachable from `box`'s object, breadth first, and the walked
    objects each refers to: those of object i are `targets[starts[i]:starts[i + 1]]`."""
    module_dicts = {id(vars(m)) for m in list(sys.modules.values())
                    if isinstance(m, ModuleType)}
    order: list[Any] = [box.pop()]
    index: dict[int, int] = {id(order[0]): 0}  # ints only: not tracked by the collector
    starts: list[int] = [0]
    targets: list[int] = []
    is_tracked = gc.is_tracked
    i = 0
    while i < len(order):
        for ref in gc.get_referents(order[i]):
            j = index.get(id(ref))
            if j is None:
                if not is_tracked(ref) or (type(ref) in _SHARED_TYPES
                                           and _boundary(ref, module_dicts)):
                    continue
                j = index[id(ref)] = len(order)
                order.append(ref)
            targets.append(j)
        starts.append(len(targets))
        i += 1
    return order, starts, targets


def _clear(obj: Any, plans: dict[type, tuple[str, ...] | None]) -> None:
    """Drop the references `obj` holds, where Python lets us (tuples and the like keep
    theirs: the cleared objects around them break their cycles).  `plans`: each type's
    slots, found once per call of `release`."""
    kind = type(obj)
    try:
        slots = plans[kind]
    except KeyError:
        slots = plans[kind] = _plan(obj)
    if slots is None:  # a container or a built-in without slots
        if isinstance(obj, (dict, list, set, deque)):
            obj.clear()
        elif isinstance(obj, CellType):
            with contextlib.suppress(ValueError):  # already empty
                del obj.cell_contents
        elif isinstance(obj, FunctionType):
            obj.__defaults__ = obj.__kwdefaults__ = None
        elif isinstance(obj, FrameType):
            with contextlib.suppress(RuntimeError):  # still running
                obj.clear()
        return
    if isinstance(obj, BaseException):
        obj.__traceback__ = obj.__context__ = obj.__cause__ = None
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict):
        attributes.clear()
    for slot in slots:
        with contextlib.suppress(AttributeError, TypeError):
            object.__delattr__(obj, slot)


def _plan(obj: Any) -> tuple[str, ...] | None:
    if isinstance(obj, (dict, list, set, deque, CellType, FunctionType, FrameType)):
        return None
    names: list[str] = []
    for klass in type(obj).__mro__:
        slots = getattr(klass, "__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__"):
                names.append(slot)
    return tuple(names)


def release_tree(box: list[Any], node_type: type) -> int:
    """Free a tree without cycles (e.g. Lark's parse tree: `node_type` objects with a
    `children` list) a slice of nodes at a time; the box must hold the caller's only
    reference, as for `release`.  Nodes are dropped parents first, so each drop frees one
    node with its leaves (subtrees are still held by the list).  Returns the node count."""
    nodes = [box.pop()]
    i = 0
    while i < len(nodes):
        nodes.extend(c for c in nodes[i].children if type(c) is node_type)
        i += 1
    for start in range(0, len(nodes), SLICE):
        nodes[start:start + SLICE] = [None] * min(SLICE, len(nodes) - start)
    return len(nodes)
