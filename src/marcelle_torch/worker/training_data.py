"""A training run's examples read from a Marcelle dataset kept in the backend.

Marcelle's ``dataset(name, store)`` (@marcellejs/core 0.6.5, class Dataset) keeps its instances in
the backend's data service ``instances-<name in kebab case>`` (``instances-teach`` for the web
app's Teach page), as ``{x, y, thumbnail, datasetName}``: ``x`` an image data URL, ``y`` its label,
and, with authentication on, the ``userId`` of the account that made it (the backend stamps it).
A training run whose input is ``{"dataset": "<name>"}`` learns from them: the worker reads every
instance of that dataset, page by page (``$limit`` within the backend's ``paginate.max``), in the
order they were made, and only the run owner's when the run has one (a user trains on their own
data). At most MAX_EXAMPLES (models/trainable.py), the bound of one training.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..errors import InvalidInput
from ..models.trainable import MAX_EXAMPLES
from .client import BackendError

# One page of instances: under the backend's paginate.max (services/backend/backend/config,
# 1000), and small enough that a page of large images stays a few MB.
PAGE = 100
# What Marcelle's dataset name may be here: the backend's datasetName (1..64 characters) whose
# service name is a plain one.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _-]{0,63}$")

Find = Callable[[str, dict], Any]


def service_name(dataset: str) -> str:
    """The backend service of a Marcelle dataset: Marcelle's toKebabCase(`instances-${name}`)."""
    kebab = re.sub(r"([a-z])([A-Z])", r"\1-\2", f"instances-{dataset}")
    return re.sub(r"[\s_]+", "-", kebab).lower()


def read_dataset(find: Find, dataset: Any, user_id: str | None, check: Callable[[], None] = lambda: None) -> list:
    """The dataset's instances as training examples ``[{"x", "y"}, ...]``; ``find(service, query)``
    is a find on the backend (a page: {total, data}); ``check()`` runs between pages (it raises to
    stop a canceled run)."""
    if not isinstance(dataset, str) or not NAME.match(dataset):
        raise InvalidInput(f"input.dataset must be a dataset name (letters, digits, space, _ and -), got {dataset!r}")
    service = service_name(dataset)
    query: dict = {"datasetName": dataset, "$select": ["x", "y"], "$sort": {"createdAt": 1, "_id": 1}}
    if user_id is not None:
        query["userId"] = user_id
    whose = " of this run's user" if user_id is not None else ""
    examples: list = []
    total = None
    while total is None or len(examples) < total:
        check()
        try:
            page = find(service, {**query, "$limit": PAGE, "$skip": len(examples)})
        except BackendError as exc:
            if exc.http_code == 404 and "No such service" in exc.message:
                raise InvalidInput(f"dataset {dataset!r}: the backend keeps no such dataset ({service})") from None
            raise
        if total is None:
            total = page["total"]
            if total == 0:
                raise InvalidInput(f"dataset {dataset!r} has no instances{whose}: add some examples first")
            if total > MAX_EXAMPLES:
                raise InvalidInput(
                    f"dataset {dataset!r} has {total} instances{whose}: at most {MAX_EXAMPLES} in one training"
                )
        if not page["data"]:
            break  # instances removed while reading: what is left is the dataset
        examples += [{"x": item.get("x"), "y": item.get("y")} for item in page["data"]]
    return examples[:MAX_EXAMPLES]
