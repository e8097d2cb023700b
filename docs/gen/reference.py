"""Reference pages generated from the code at build time: the command line (argparse), the HTTP API
(the router's OpenAPI document), the project's own metrics and alert rules, the chart's values
and the backend's access table. Each function returns Markdown; docs/gen/hooks.py puts it in place.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "marcelle-torch"
HELP_WIDTH = "100"  # the CLI's help is wrapped at this width, whatever the terminal building the docs


def load_module(path: Path, name: str) -> ModuleType:
    """A script of the repository (bench/, tests/, charts/) imported by its path, with its folder
    on sys.path as when it runs (a bench script imports its neighbours)."""
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slug(text: str) -> str:
    """The anchor MkDocs' toc extension gives a heading (its default slugify)."""
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def table_cell(text: object) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    # Prometheus templates in alert texts, shown as written
    return re.sub(r"(\{\{.*?\}\})", r"`\1`", text)


# ----------------------------------------------------------------------------- command line


def _commands(parser: argparse.ArgumentParser, path: list[str]) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(full command, its one-line help, its parser) for every command under ``parser``, depth first."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:  # an alias
                continue
            seen.add(id(sub))
            yield " ".join([*path, name]), helps.get(name, ""), sub
            yield from _commands(sub, [*path, name])


def cli() -> str:
    from marcelle_torch.cli import build_parser

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH
    try:
        parser = build_parser()
        commands = list(_commands(parser, [parser.prog]))
        out = [
            "| command | what it does |",
            "|---|---|",
            *(f"| [`{name}`](#{slug(name)}) | {table_cell(help_)} |" for name, help_, _ in commands),
            "",
            f"## {parser.prog}",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
        ]
        for name, help_, sub in commands:
            out += ["", f"## {name}", ""]
            if help_:
                out += [help_[0].upper() + help_[1:], ""]
            out += ["```text", sub.format_help().rstrip(), "```"]
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- HTTP API


def openapi_document() -> dict:
    """The router's /openapi.json, built from its FastAPI app without starting Ray or Serve."""
    from marcelle_torch.serving.app import Router
    from marcelle_torch.serving.options import RouterArgs

    cls = Router.func_or_class  # the class under @serve.deployment
    router = cls.__new__(cls)
    router.args = RouterArgs()
    return cls.__serve_build_asgi_app__(router).openapi()


def _schema_name(schema: dict) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{slug(name)})"
    if schema.get("type") == "array" and "items" in schema:
        return f"array of {_schema_name(schema['items'])}"
    if "anyOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["anyOf"])
    if schema.get("properties"):
        return "object: " + ", ".join(f"`{key}`" for key in schema["properties"])
    return f"`{schema.get('type', 'any')}`"


def _body(content: dict | None) -> str:
    if not content:
        return ""
    return "; ".join(f"{_schema_name(media.get('schema', {}))} (`{kind}`)" for kind, media in content.items())


def http_api(doc: dict) -> str:
    out = [
        f"{doc['info'].get('description', '')}",
        "",
        f"OpenAPI {doc['openapi']}, API version {doc['info']['version']}: the document below is rendered from "
        "[openapi.json](openapi.json), which the router builds (`src/marcelle_torch/serving/app.py`) and a "
        "running server publishes at `GET /openapi.json`, with Swagger UI at `GET /docs`.",
        "",
        "| method | path | summary |",
        "|---|---|---|",
    ]
    operations = [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if "responses" in op
    ]
    for method, path, op in operations:
        title = f"{method} {path}"
        out.append(f"| {method} | [`{path}`](#{slug(title)}) | {table_cell(op.get('summary', ''))} |")
    for method, path, op in operations:
        out += ["", f"## {method} {path}", ""]
        if op.get("summary"):
            out += [f"**{op['summary']}.** {op.get('description', '')}".rstrip(), ""]
        params = op.get("parameters", [])
        if params:
            out += ["| parameter | in | required | type |", "|---|---|---|---|"]
            out += [
                f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | "
                f"{_schema_name(p.get('schema', {}))} |"
                for p in params
            ]
            out.append("")
        body = op.get("requestBody")
        if body:
            required = "required" if body.get("required") else "optional"
            out += [f"Request body ({required}): {_body(body.get('content'))}", ""]
            for media in body.get("content", {}).values():
                if "$ref" not in media.get("schema", {"$ref": ""}):  # an inline schema: shown here
                    out += ["```json", json.dumps(media["schema"], indent=2), "```", ""]
        out += ["| status | meaning | body | headers |", "|---|---|---|---|"]
        for status, response in op["responses"].items():
            headers = ", ".join(f"`{name}`" for name in response.get("headers", {}))
            out.append(
                f"| {status} | {table_cell(response.get('description', ''))} | {_body(response.get('content'))} | "
                f"{headers} |"
            )
    schemas = doc.get("components", {}).get("schemas", {})
    if schemas:
        out += ["", "## Schemas"]
        for name, schema in schemas.items():
            out += ["", f"### {name}", ""]
            if schema.get("description"):
                out += [" ".join(schema["description"].split()), ""]
            out += ["```json", json.dumps(schema, indent=2), "```"]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- metrics


def _serve_metrics() -> list[dict]:
    """The Serve replicas' metrics, read from serving/metrics.py's source (creating them needs Ray)."""
    source = REPO / "src" / "marcelle_torch" / "serving" / "metrics.py"
    rows = []
    for node in ast.walk(ast.parse(source.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        kind = node.func.attr.lower()
        if kind not in ("counter", "gauge", "histogram") or not node.args:
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        name = ast.literal_eval(node.args[0])
        tags = list(ast.literal_eval(keywords["tag_keys"])) if "tag_keys" in keywords else []
        rows.append(
            {
                "name": f"ray_{name}" + ("_total" if kind == "counter" else ""),
                "type": kind,
                "labels": [*tags, "application", "deployment", "replica"],
                "source": "model replicas, `ray.serve.metrics` (`serving/metrics.py`), on each Ray node's metrics port",
                "help": ast.literal_eval(keywords["description"]) if "description" in keywords else "",
            }
        )
    return rows


def _client_metrics(owner: object, source: str) -> list[dict]:
    """prometheus_client metrics held as attributes of ``owner`` (a WorkerMetrics, a Supervisor)."""
    from prometheus_client.metrics import MetricWrapperBase

    rows = []
    for metric in vars(owner).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        kind = metric._type
        rows.append(
            {
                "name": metric._name + ("_total" if kind == "counter" else ""),
                "type": kind,
                "labels": list(metric._labelnames),
                "source": source,
                "help": metric._documentation,
            }
        )
    return rows


def _probe_metrics() -> list[dict]:
    from marcelle_torch import probe

    class Fixed(probe.ProbeCollector):  # one made-up result, to read the families without probing anything
        def results(self) -> dict[str, tuple[int, float, int]]:
            return {"target": (1, 0.0, 200)}

    rows = []
    for family in Fixed({"target": "http://target/"}).collect():
        labels = [k for k in family.samples[0].labels] if family.samples else []
        rows.append(
            {
                "name": family.name,
                "type": family.type,
                "labels": labels,
                "source": "health probe (`python -m marcelle_torch.probe`)",
                "help": family.documentation,
            }
        )
    return rows


def project_metrics() -> list[dict]:
    from marcelle_torch.stack.supervise import Supervisor
    from marcelle_torch.worker.metrics import WorkerMetrics

    return [
        *_serve_metrics(),
        *_client_metrics(WorkerMetrics(), "run worker (`--metrics-port`, prometheus_client)"),
        *_probe_metrics(),
        *_client_metrics(Supervisor(), "local launcher (`marcelle-torch up --monitoring`), beside the probe's"),
    ]


def metrics_table() -> str:
    out = ["| Name | Type | Labels | Source | Meaning |", "|---|---|---|---|---|"]
    for m in project_metrics():
        suffixes = " (`_bucket`, `_sum`, `_count`)" if m["type"] == "histogram" else ""
        labels = ", ".join(f"`{label}`" for label in m["labels"]) or "(none)"
        source, meaning = table_cell(m["source"]), table_cell(m["help"])
        out.append(f"| `{m['name']}`{suffixes} | {m['type']} | {labels} | {source} | {meaning} |")
    return "\n".join(out) + "\n"


def alerts_table() -> str:
    rules = yaml.safe_load((CHART / "rules" / "alerts.yaml").read_text())
    out = ["| Alert | Fires when | For | Severity |", "|---|---|---|---|"]
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            text = rule.get("annotations", {}).get("description", "")
            out.append(
                f"| `{rule['alert']}` | {table_cell(text)} | {rule.get('for', '0s')} | "
                f"{rule.get('labels', {}).get('severity', '')} |"
            )
    return "\n".join(out) + "\n"


def metrics_read() -> set[str]:
    """Every metric name the shipped dashboards and alert rules read (histogram suffixes removed)."""
    text = (CHART / "rules" / "alerts.yaml").read_text()
    text += "".join(p.read_text() for p in sorted((CHART / "dashboards").glob("*.json")))
    names = re.findall(r"\b(?:ray|marcelle_torch|probe|DCGM)_[A-Za-z0-9_]+", text)
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


# ----------------------------------------------------------------------------- chart and backend


def chart_readme() -> str:
    """The chart's README (charts/marcelle-torch/gen_readme.py: its notes and the values table), without its title."""
    text = load_module(CHART / "gen_readme.py", "marcelle_torch_chart_readme").render()
    return text.split("\n", 1)[1].lstrip("\n") if text.startswith("# ") else text


def access_table() -> str:
    """The expected outcomes that tests/reliability/test_access_matrix.py checks against a real backend."""
    module = load_module(REPO / "tests" / "reliability" / "access_table.py", "marcelle_torch_access_table")
    return module.markdown() + "\n"


def _grant_cell(grant: dict, method: str) -> str:
    text = "yes" if method == "create" else grant["scope"]
    return f"{text} ({grant['write']})" if grant.get("write") else text


def access_policy() -> str:
    """The backend's policy (services/backend/policy.js, read by running it): who may call what."""
    reader = load_module(REPO / "tests" / "reliability" / "backend_policy.py", "marcelle_torch_backend_policy")
    policy = reader.load()
    callers, services, grants = policy["callers"], policy["services"], policy["grants"]
    conditions = {"allowSignup": "with sign-up on"}
    assert set(conditions) == set(policy["conditions"]), "a condition of policy.js has no words here"

    def cell(caller: str, service: str, method: str) -> str:
        if caller == "auth off" and services[service].get("auth"):
            return "not served"
        own = grants[caller].get(service, {}).get(method)
        if own:
            return _grant_cell(own, method)
        anyone = grants["anyone"].get(service, {}).get(method)
        if anyone:
            text = f"anyone ({anyone['write']})" if anyone.get("write") else "anyone"
            return f"{conditions[anyone['when']]}: {text}" if anyone.get("when") else text
        return "—"

    lines = ["| service, method | " + " | ".join(callers) + " |", "|---" * (len(callers) + 1) + "|"]
    for service, about in services.items():
        if service == "*":
            row = ["another data service of `whitelist.services`, every method"]
            row += [cell(caller, service, "find") for caller in callers]
            lines.append("| " + " | ".join(row) + " |")
            continue
        for method in about["methods"]:
            lines.append(f"| `{service}` {method} | " + " | ".join(cell(c, service, method) for c in callers) + " |")
    one_at_a_time = "; ".join(
        f"`{name}` {' and '.join(about['oneAtATime'])}" for name, about in services.items() if about.get("oneAtATime")
    )
    writes = "; ".join(f"*{name}*: {what}" for name, what in policy["writes"].items())
    casl = "\n".join(
        f"{role:7} {rule['action']:6} {rule['subject']}"
        + "".join(f" where {field} = {value}" for field, value in rule.get("conditions", {}).items())
        for role, rules in policy["casl"].items()
        for rule in rules
    )
    return "\n".join(
        [
            *lines,
            "",
            "*all*: every record; *own*: the caller's runs and instances (`userId`) or account (`_id`),"
            " another's is not found (404); *anyone*: no login needed (a token is not even read); *not served*: with"
            " authentication off there are no accounts (404). *—*: refused: 401 without a valid token,"
            " 404 for a record the caller may not read (an account not its own), 403 otherwise."
            " A method a service does not take (`update`: records are changed with patch) is 405 for"
            f" everyone, and so are these without an id (one record at a time): {one_at_a_time}."
            " Instances are removed many at once (Marcelle's `dataset.clear()`), the caller's own where"
            " its grant is *own*. What a caller may write, where its"
            f" grant limits it: {writes}.",
            "",
            "The package's own checks (its feathers-casl hooks, its real-time channels, the `rules` a"
            " login answers) get the CASL rules derived from these grants (`permissions`, `${user._id}`"
            " being the caller's id):",
            "",
            "```text",
            casl,
            "```",
            "",
        ]
    )
