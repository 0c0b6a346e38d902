"""Walking a LangChain runnable tree: copy it with some parts swapped, and find the parts that cannot be looked into.

The walk goes through pydantic runnables field by field (sequences, parallels, bindings such as ``bind_tools``,
retries, fallbacks, branches, assigns, structured-output chains), lists, tuples and mappings, and the nodes of a
compiled LangGraph graph (a ``Pregel``: each node's runnable, subgraphs included), and copies only what changed: the
user's objects are never modified. A runnable it cannot look into (a function: ``RunnableLambda``, a LangGraph
function node) is *opaque*; :func:`models_referenced` finds the models such a function refers to (its closure and
the globals it names), so that they can be named in a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.runnables import Runnable
from pydantic import BaseModel

__all__ = ["models_referenced", "rebuild", "replace_runnable"]

Swap = Callable[[Any], Any]


def _pregel() -> Any:
    try:
        from langgraph.pregel import Pregel
    except ImportError:  # langgraph is optional
        return None
    return Pregel


def rebuild(value: Any, swap: Swap, opaque: list[Runnable[Any, Any]] | None = None) -> Any:
    """A copy of ``value`` in which every part ``swap`` replaces (it returns a new object, or the part itself to keep
    it and look inside; models are not looked inside) is replaced; the runnables the walk cannot look into are
    appended to ``opaque``."""
    new = swap(value)
    if new is not value or isinstance(value, BaseLanguageModel):  # a model is a leaf: never look inside one
        return new
    pregel = _pregel()
    if pregel is not None and isinstance(value, pregel):
        nodes = {
            name: node.copy({"bound": bound})
            if (bound := rebuild(node.bound, swap, opaque)) is not node.bound
            else node
            for name, node in value.nodes.items()
        }
        changed = any(nodes[name] is not node for name, node in value.nodes.items())
        return value.copy({"nodes": nodes}) if changed else value
    if isinstance(value, Runnable) and isinstance(value, BaseModel):
        updates = {}
        for name in type(value).model_fields:
            child = getattr(value, name, None)
            replaced = rebuild(child, swap, opaque)
            if replaced is not child:
                updates[name] = replaced
        return value.model_copy(update=updates) if updates else value
    if isinstance(value, Runnable):  # a function, a graph node: it may call models the walk cannot reach
        if opaque is not None:
            opaque.append(value)
        return value
    if isinstance(value, list | tuple):
        items = [rebuild(item, swap, opaque) for item in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return type(value)(items) if isinstance(value, tuple) else items
        return value
    if isinstance(value, Mapping):
        mapped = {key: rebuild(item, swap, opaque) for key, item in value.items()}
        return mapped if any(mapped[key] is not value[key] for key in value) else value
    return value


def replace_runnable(root: Any, old: Any, new: Any) -> Any:
    """``root`` with the object ``old`` (by identity) replaced by ``new`` wherever the walk reaches it."""
    return rebuild(root, lambda part: new if part is old else part)


def models_referenced(runnable: Runnable[Any, Any]) -> list[tuple[str, BaseLanguageModel[Any]]]:
    """The models an opaque runnable's functions refer to: ``(name, model)`` from their closures and the globals
    they name (a model bound with tools counts as its model)."""
    found: list[tuple[str, BaseLanguageModel[Any]]] = []
    for attribute in ("func", "afunc"):
        function = getattr(runnable, attribute, None)
        code = getattr(function, "__code__", None)
        if code is None:
            continue
        cells = zip(code.co_freevars, getattr(function, "__closure__", None) or (), strict=False)
        named = [(name, cell.cell_contents) for name, cell in cells if _filled(cell)]
        scope = getattr(function, "__globals__", {})
        named += [(name, scope[name]) for name in code.co_names if name in scope]
        for name, value in named:
            model = getattr(value, "bound", value)  # bind_tools(...) gives a binding of the model
            if isinstance(model, BaseLanguageModel) and all(model is not seen for _, seen in found):
                found.append((name, model))
    return found


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises ValueError
    except ValueError:
        return False
    return True
