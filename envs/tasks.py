"""Task lists: a run's task ids are the positions of its (canonical) task names."""

from __future__ import annotations

from .factory import normalize_task, validate_task


def task_names(kind: str, names: list[str]) -> list[str]:
    """Canonical, validated task names in the given order; the index of a name is its task id.

    Duplicates are rejected because two task ids for one game would split its data and its
    head between two ids while metrics merged them under one name.
    """
    if not names:
        raise ValueError(f"no tasks given for env kind {kind!r}")
    canonical = []
    for name in names:
        validate_task(kind, name)
        canonical.append(normalize_task(kind, name))
    seen: dict[str, str] = {}
    for original, name in zip(names, canonical):
        if name in seen:
            raise ValueError(f"task {original!r} repeats {seen[name]!r} (both are {name!r})")
        seen[name] = original
    return canonical
