"""worker/training_data.py: how a training run reads a Marcelle dataset from the backend (a fake
``find``; the real backend is tests/integration/test_training_runs.py's)."""

from __future__ import annotations

import pytest

from marcelle_torch.errors import InvalidInput
from marcelle_torch.worker import training_data
from marcelle_torch.worker.client import BackendError
from marcelle_torch.worker.training_data import read_dataset, service_name


def fake_find(instances: list[dict], calls: list):
    """A backend's find over ``instances``: filters by datasetName and userId, pages by $skip/$limit."""

    def find(service, query):
        calls.append((service, dict(query)))
        assert query["$limit"] <= 1000, "over the backend's paginate.max"
        rows = [i for i in instances if i["datasetName"] == query["datasetName"]]
        if "userId" in query:
            rows = [i for i in rows if i.get("userId") == query["userId"]]
        page = rows[query["$skip"] : query["$skip"] + query["$limit"]]
        return {"total": len(rows), "data": [{"_id": str(id(i)), "x": i["x"], "y": i["y"]} for i in page]}

    return find


def instances(n: int, user: str | None = None, dataset: str = "teach") -> list[dict]:
    return [
        {"x": f"data:image/png;base64,{i}", "y": f"l{i % 3}", "datasetName": dataset, "userId": user} for i in range(n)
    ]


def test_every_instance_is_read_page_by_page_in_the_order_they_were_made():
    calls: list = []
    data = instances(250) + instances(5, dataset="other")
    examples = read_dataset(fake_find(data, calls), "teach", None)
    assert examples == [{"x": i["x"], "y": i["y"]} for i in data[:250]]
    assert [q["$skip"] for _, q in calls] == [0, 100, 200]
    service, query = calls[0]
    assert service == "instances-teach" and query["$select"] == ["x", "y"] and "userId" not in query
    assert query["$sort"] == {"createdAt": 1, "_id": 1}


def test_a_run_with_an_owner_reads_the_owners_instances_only():
    calls: list = []
    examples = read_dataset(fake_find(instances(3, "a") + instances(4, "b"), calls), "teach", "a")
    assert len(examples) == 3 and all(q["userId"] == "a" for _, q in calls)


def test_empty_unknown_too_large_and_bad_names_are_the_users_errors(monkeypatch):
    with pytest.raises(InvalidInput, match="has no instances of this run's user"):
        read_dataset(fake_find(instances(3, "b"), []), "teach", "a")

    def unserved(service, query):
        raise BackendError("NotFound", "No such service: this backend serves info, runs", 404)

    with pytest.raises(InvalidInput, match=r"keeps no such dataset \(instances-other\)"):
        read_dataset(unserved, "other", None)
    monkeypatch.setattr(training_data, "MAX_EXAMPLES", 10)
    with pytest.raises(InvalidInput, match="has 11 instances: at most 10 in one training"):
        read_dataset(fake_find(instances(11), []), "teach", None)
    for name in ("", "../users", "a" * 65, 3, None):
        with pytest.raises(InvalidInput, match="input.dataset must be a dataset name"):
            read_dataset(fake_find([], []), name, None)


def test_a_canceled_run_stops_between_pages():
    class Stop(Exception):
        pass

    pages = []

    def check():
        if len(pages) == 2:
            raise Stop

    def find(service, query):
        pages.append(query["$skip"])
        return fake_find(instances(500), [])(service, query)

    with pytest.raises(Stop):
        read_dataset(find, "teach", None, check)
    assert pages == [0, 100]


def test_the_service_is_marcelles_kebab_case_name():
    assert service_name("teach") == "instances-teach"
    assert service_name("myTeach set") == "instances-my-teach-set"
    assert service_name("my_data") == "instances-my-data"
