"""MkDocs hooks (mkdocs.yml `hooks:`): the generated parts of the pages.

A page asks for a generated part with an HTML comment alone on its line::

    <!-- generated: cli -->
    <!-- generated: bench serve_latency -->

and the hook replaces it at build time with Markdown made from the code (docs/gen/reference.py) or
from the benchmarks' committed results (docs/gen/figures.py). An unknown name fails the build, as
does a metric the dashboards or alert rules read that the metrics page does not list.
"""

from __future__ import annotations

import json
import re
import sys
from functools import cache
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

GEN = Path(__file__).resolve().parent
if str(GEN) not in sys.path:
    sys.path.insert(0, str(GEN))

import figures  # noqa: E402
import reference  # noqa: E402

MARKER = re.compile(r"^<!-- generated: (?P<name>[a-z-]+)(?: (?P<arg>[\w.-]+))? -->$", re.M)
OPENAPI_URI = "reference/openapi.json"


@cache
def openapi() -> dict:
    return reference.openapi_document()


GENERATORS = {
    "cli": lambda arg: reference.cli(),
    "http-api": lambda arg: reference.http_api(openapi()),
    "metrics": lambda arg: reference.metrics_table(),
    "alerts": lambda arg: reference.alerts_table(),
    "chart-readme": lambda arg: reference.chart_readme(),
    "access-table": lambda arg: reference.access_table(),
    "access-policy": lambda arg: reference.access_policy(),
    "bench": figures.bench,
    "bench-index": lambda arg: figures.index(),
    "reliability": lambda arg: figures.reliability(),
    "head-loss": lambda arg: figures.head_loss(),
}


def on_files(files, config):
    # The OpenAPI document itself, beside the page rendered from it.
    files.append(File.generated(config, OPENAPI_URI, content=json.dumps(openapi(), indent=2) + "\n"))
    return files


def on_page_markdown(markdown, page, config, files):
    def replace(match: re.Match) -> str:
        name, arg = match["name"], match["arg"]
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_uri}: unknown generated part {name!r} (known: {', '.join(GENERATORS)})")
        try:
            return GENERATORS[name](arg).rstrip("\n")
        except Exception as exc:  # the page, the part and the cause, instead of a bare traceback
            raise PluginError(f"{page.file.src_uri}: generating {match[0]} failed: {exc!r}") from exc

    markdown = MARKER.sub(replace, markdown)
    if page.file.src_uri == "reference/metrics.md":
        missing = sorted(name for name in reference.metrics_read() if f"`{name}" not in markdown)
        if missing:
            raise PluginError(
                f"reference/metrics.md: metrics the dashboards or alert rules read, not listed: {missing}"
            )
    return markdown
