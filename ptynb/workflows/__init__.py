"""The workflows and their registry.

Every front end reads this one registry: the CLI (``ptynb run <name>``), the served index page
and apps (``ptynb serve``: ``/<name>``), and the notebooks. A workflow is a
:class:`~ptynb.workflows._base.Workflow` object (settings, steps, views, app); registering it
is one line here (built-in), one call of :func:`register` (in a session), or, for plug-ins
that ``ptynb serve``/``ptynb run`` should find in a fresh process, an entry point in the group
``ptynb.workflows`` or a ``module:attribute`` in the environment variable
``PTYNB_WORKFLOWS`` (comma separated).

Entries are imported lazily: listing the names does not import the workflow modules.
"""
from __future__ import annotations

import os

from ._base import Run, Step, Workflow, WorkflowSettings

__all__ = ["Workflow", "WorkflowSettings", "Step", "Run", "register", "get", "names",
           "UnknownWorkflowError"]

#: built-in workflows: name -> "module:attribute" of their Workflow object
BUILTIN: dict[str, str] = {
    "stereo": "ptynb.workflows.stereo:WORKFLOW",
    "mspt": "ptynb.workflows.mspt:WORKFLOW",
    "adept": "ptynb.workflows.adept:WORKFLOW",
    "apt": "ptynb.workflows.apt:WORKFLOW",
}

_REGISTRY: dict[str, Workflow | str] = dict(BUILTIN)
_PLUGINS_LOADED = False


class UnknownWorkflowError(KeyError):
    """No workflow of that name is registered."""

    def __str__(self):
        return str(self.args[0]) if self.args else "unknown workflow"


def register(workflow: Workflow | str, *, name: str | None = None, replace: bool = False) -> None:
    """Register a :class:`Workflow` (or its ``"module:attribute"`` path, loaded on first use).

    ``name`` defaults to ``workflow.name`` (required for a path). Registering a taken name
    raises ValueError unless ``replace=True``.
    """
    if isinstance(workflow, str):
        if ":" not in workflow:
            raise ValueError(f"register: a workflow path is 'module:attribute', got {workflow!r}")
        if name is None:
            raise ValueError("register: give name= when registering a workflow by its path")
    elif not isinstance(workflow, Workflow):
        raise TypeError(f"register: expected a Workflow, got {type(workflow).__name__}")
    key = name or workflow.name
    if key in _REGISTRY and not replace and _REGISTRY[key] is not workflow:
        raise ValueError(f"a workflow named {key!r} is already registered (pass replace=True)")
    _REGISTRY[key] = workflow


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="ptynb.workflows"):
        _REGISTRY.setdefault(ep.name, ep.value)
    for item in filter(None, (x.strip() for x in os.environ.get("PTYNB_WORKFLOWS", "").split(","))):
        wf = _resolve(item)
        _REGISTRY.setdefault(wf.name, wf)


def _resolve(path: str) -> Workflow:
    from ._base import _load

    try:
        wf = _load(path)
    except (ImportError, AttributeError) as exc:
        raise UnknownWorkflowError(f"cannot load workflow {path!r}: {exc}") from exc
    if not isinstance(wf, Workflow):
        raise TypeError(f"{path!r} is a {type(wf).__name__}, not a ptynb Workflow")
    return wf


def names() -> list[str]:
    """Names of the registered workflows (built-in first, then plug-ins)."""
    _load_plugins()
    return list(_REGISTRY)


def get(name: str) -> Workflow:
    """The registered workflow ``name`` (imported on first use).

    Raises
    ------
    UnknownWorkflowError
        If no workflow has that name (the message lists the registered ones).
    """
    _load_plugins()
    if name not in _REGISTRY:
        raise UnknownWorkflowError(f"unknown workflow {name!r}; available: {', '.join(_REGISTRY)}")
    wf = _REGISTRY[name]
    if isinstance(wf, str):
        wf = _resolve(wf)
        _REGISTRY[name] = wf
    return wf
