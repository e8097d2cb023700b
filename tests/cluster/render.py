"""What the cluster tier runs, read from the rendered chart and the images' Dockerfiles.

Nothing here knows the chart's names, ports, values or env vars: they come from the objects
`helm template` renders (with the kind e2e's value set and monitoring on) and from the
services/*/Dockerfile each image is built from.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "chart"))

from k8s_tools import REPO, by_kind, find_tool, render_text  # noqa: E402,F401 (find_tool: for conftest)

KIND_VALUES = REPO / "tests" / "e2e" / "kind-values.yaml"
RELEASE, NAMESPACE = "mt", "marcelle-torch"
# The value set of the kind e2e, plus the monitoring objects (PodMonitors, probe sidecar).
SETS = ("monitoring.enabled=true",)


def render_objects(release: str = RELEASE, namespace: str = NAMESPACE, sets: tuple[str, ...] = ()) -> list[dict]:
    text = render_text(KIND_VALUES, sets=SETS + sets, release=release, namespace=namespace).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


# ------------------------------------------------------------------------------ images


@dataclass
class Image:
    """What a container gets from its image (services/<x>/Dockerfile, final stage)."""

    dockerfile: Path
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    # image path -> repository path, from the final stage's COPY lines with repository sources
    copies: dict[str, Path] = field(default_factory=dict)
    trains: list[str] = field(default_factory=list)  # `marcelle-torch train X` run at build time
    base: str = ""

    def resolve(self, image_path: str) -> Path | None:
        """The repository path an image path came from (longest COPY prefix), if any."""
        for target in sorted(self.copies, key=len, reverse=True):
            if image_path == target or image_path.startswith(target.rstrip("/") + "/"):
                return self.copies[target] / image_path[len(target) :].lstrip("/")
        return None


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return lines


def _exec_form(rest: str) -> list[str]:
    rest = rest.strip()
    return json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]


def parse_dockerfile(path: Path) -> Image:
    """ENV, WORKDIR, ENTRYPOINT, CMD and COPY of the final stage (ARG defaults substituted).
    COPY --from=<stage> is followed through that stage's own COPYs back to the repository
    (e.g. the web app's /usr/share/nginx/html <- build stage /app/dist <- services/frontend/dist)."""
    stages: dict[str, Image] = {}
    image = Image(path)
    args: dict[str, str] = {}
    for line in _logical_lines(path.read_text()):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG":
            name, _, default = rest.strip().partition("=")
            args[name] = default
            continue
        rest = re.sub(
            r"\$\{(\w+)\}", lambda m, image=image: args.get(m.group(1), image.env.get(m.group(1), m.group(0))), rest
        )
        if word == "FROM":  # a new stage: only the last one is the image
            parts = rest.split()
            image = Image(path)
            image.base = parts[0]
            if len(parts) >= 3 and parts[1].upper() == "AS":
                stages[parts[2]] = image
        elif word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                image.env[key] = value
        elif word == "WORKDIR":
            image.workdir = (
                rest.strip() if rest.strip().startswith("/") else f"{image.workdir.rstrip('/')}/{rest.strip()}"
            )
        elif word == "ENTRYPOINT":
            image.entrypoint, image.cmd = _exec_form(rest), []
        elif word == "CMD":
            image.cmd = _exec_form(rest)
        elif word == "COPY":
            words = shlex.split(rest)
            source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            *sources, dest = [t for t in words if not t.startswith("--")]
            dest = dest if dest.startswith("/") else f"{image.workdir.rstrip('/')}/{dest.removeprefix('./')}"
            for source in sources:
                # Docker: a directory's contents go into dest; a file into dest/ keeps its name.
                is_dir = source_stage is None and (REPO / source).is_dir()
                target = dest.rstrip("/") + "/" + Path(source).name if dest.endswith("/") and not is_dir else dest
                target = target.replace("/./", "/").rstrip("/") or "/"
                if source_stage is None:
                    image.copies[target] = REPO / source
                elif source_stage in stages:
                    origin = stages[source_stage].resolve(source)
                    if origin is not None:
                        image.copies[target] = origin
        elif word == "RUN":
            image.trains += re.findall(r"marcelle-torch train ([\w.:-]+)", rest)
    return image


def image_of(container: dict) -> Image:
    """The Dockerfile an image is built from, named by the Makefile's `images` target."""
    repository = container["image"].split(":")[0]
    makefile = (REPO / "Makefile").read_text()
    for dockerfile, tag in re.findall(r"docker build -f (\S+)(?: --build-arg \S+)? -t (\S+)", makefile):
        if tag.split(":")[0].replace("$(REGISTRY)", repository.split("/")[0]) == repository:
            return parse_dockerfile(REPO / dockerfile)
    raise AssertionError(f"no Dockerfile in the Makefile builds {repository}")


# ------------------------------------------------------------------------------ objects


def one(objects: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def secrets(objects: list[dict]) -> dict[str, dict[str, str]]:
    """Secret name -> decoded data: the values `helm template` generated."""
    out = {}
    for secret in by_kind(objects, "Secret"):
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        data.update(secret.get("stringData") or {})
        out[secret["metadata"]["name"]] = data
    return out


def configmaps(objects: list[dict]) -> dict[str, dict[str, str]]:
    return {c["metadata"]["name"]: dict(c.get("data") or {}) for c in by_kind(objects, "ConfigMap")}


def field_value(path: str, pod: dict) -> str:
    """A downward-API fieldRef (metadata.name, metadata.labels['x'], status.podIP ...)."""
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return pod["metadata"].get(match.group(1), {}).get(match.group(2), "")
    return {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": pod["metadata"]["namespace"],
        "status.podIP": pod["status"]["podIP"],
        "spec.nodeName": "cluster-tier",
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
    }[path]


def resolve_env(container: dict, pod: dict, objects: list[dict]) -> dict[str, str]:
    """The container's env as the kubelet resolves it: values, secretKeyRef, configMapKeyRef,
    fieldRef, and $(VAR) references to earlier variables."""
    found_secrets, found_maps = secrets(objects), configmaps(objects)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            env.update(found_secrets[source["secretRef"]["name"]])
        if "configMapRef" in source:
            env.update(found_maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
            continue
        ref = var.get("valueFrom", {})
        if "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            data = found_secrets.get(key["name"])
            if data is None or key["key"] not in data:
                if key.get("optional"):
                    continue
                raise AssertionError(f"env {var['name']}: secret {key['name']} key {key['key']} is not rendered")
            env[var["name"]] = data[key["key"]]
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[var["name"]] = found_maps[key["name"]][key["key"]]
        elif "fieldRef" in ref:
            env[var["name"]] = field_value(ref["fieldRef"]["fieldPath"], pod)
        else:
            raise AssertionError(f"env {var['name']}: unsupported source {ref}")
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' dependent variable expansion: $(VAR) -> value, $$ -> $."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def volume_files(volume: dict, objects: list[dict]) -> dict[str, str] | None:
    """A ConfigMap/Secret volume's files (name -> content); None for other volume kinds."""
    if "configMap" in volume:
        data = configmaps(objects)[volume["configMap"]["name"]]
    elif "secret" in volume:
        data = secrets(objects)[volume["secret"]["secretName"]]
    else:
        return None
    source = volume.get("configMap") or volume.get("secret")
    if source.get("items"):
        return {item["path"]: data[item["key"]] for item in source["items"]}
    return dict(data)


def container_port(container: dict, port) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def deep(obj):
    return copy.deepcopy(obj)


# ------------------------------------------------------------------- the code's contract

SRC = REPO / "src"
BACKEND_DIR = REPO / "services" / "backend"
_PY_ENV = re.compile(
    r"""(?:os\.environ\.get|os\.getenv|environ\.get|getenv)\(\s*["']([A-Z_][A-Z0-9_]*)["']"""
    r"""|environ\[\s*["']([A-Z_][A-Z0-9_]*)["']\s*\]"""
)
_PY_ENV_CONST = re.compile(r"""^\s*[A-Z_]*ENV[A-Z_]*\s*=\s*["']([A-Z_][A-Z0-9_]*)["']""", re.M)
_PY_ENV_REQUIRED = re.compile(r"""environ\[\s*["']([A-Z_][A-Z0-9_]*)["']\s*\]""")


def python_env_reads(root: Path = SRC) -> set[str]:
    """Env vars the package reads: os.environ.get/getenv/environ[...] names and *_ENV constants."""
    names = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        for a, b in _PY_ENV.findall(text):
            names.add(a or b)
        names.update(_PY_ENV_CONST.findall(text))
    return names


def python_env_required(root: Path = SRC) -> set[str]:
    """Env vars the package reads with no default (os.environ["X"])."""
    names = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        names.update(n for n in _PY_ENV_REQUIRED.findall(text) if f'environ["{n}"] =' not in text)
    return names


def library_reads(name: str, package_dir: Path) -> bool:
    """True when an installed library's Python source names the variable (e.g. Ray's RAY_*)."""
    pattern = name.encode()
    for path in package_dir.rglob("*.py"):
        if pattern in path.read_bytes():
            return True
    return False


def _leaves(tree, prefix=()):
    if isinstance(tree, dict) and "__name" in tree:
        yield prefix, tree["__name"]
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, prefix + (key,))
    else:
        yield prefix, tree


def backend_env_map() -> dict[str, tuple[str, ...]]:
    """env var -> config key, from node-config's custom-environment-variables.yaml."""
    mapping = yaml.safe_load((BACKEND_DIR / "backend" / "config" / "custom-environment-variables.yaml").read_text())
    return {var: key for key, var in _leaves(mapping)}


def backend_env_reads() -> set[str]:
    names = set(backend_env_map())
    for path in BACKEND_DIR.glob("*.js"):
        names.update(re.findall(r"process\.env\.([A-Z_][A-Z0-9_]*)", path.read_text()))
    return names


def backend_config_defaults(node_env: str) -> dict:
    """default.yaml merged with <NODE_ENV>.yaml (node-config's order)."""
    config_dir = BACKEND_DIR / "backend" / "config"
    merged: dict = {}

    def merge(into, extra):
        for k, v in (extra or {}).items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = v

    for name in ("default.yaml", f"{node_env}.yaml"):
        if (config_dir / name).exists():
            merge(merged, yaml.safe_load((config_dir / name).read_text()))
    return merged


def backend_env_required(env: dict[str, str]) -> set[str]:
    """Variables mapped in custom-environment-variables.yaml whose config key has no value in
    the config files, in a section the rendered env turns on: a section with an `enabled` key
    counts only when that resolves true; `marcelleTorch` (the worker account) is read by
    start.js only when authentication is on (`if (authEnabled) await ensureWorkerAccount()`)."""
    defaults = backend_config_defaults(env.get("NODE_ENV", "development"))
    env_map = backend_env_map()
    by_key = {key: var for var, key in env_map.items()}

    def in_files(key):
        node = defaults
        for part in key:
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def configured(key):
        var = by_key.get(key)
        if var in env:
            return json.loads(env[var]) if key[-1] == "enabled" else env[var]
        return in_files(key)

    auth_on = configured(("authentication", "enabled")) is True
    required = set()
    for var, key in env_map.items():
        if key[0] in ("authentication", "marcelleTorch") and not auth_on:
            continue
        if var == "MONGODB_URL" and configured(("database",)) != "mongodb":
            continue
        if in_files(key) in (None, ""):
            required.add(var)
    return required


def argparse_options(argv: list[str]) -> tuple[set[str], list[str], int] | None:
    """For a `marcelle-torch <command>` or `python -m <module> ...` argv: (option strings the
    code's own parser accepts, required options, count of required positionals)."""
    import argparse

    if argv and Path(argv[0]).name == "marcelle-torch":
        from marcelle_torch.cli import build_parser

        # The command's parser, through nested commands (`model fetch ...`).
        command, depth = build_parser(), 1
        while sub := next((a for a in command._actions if isinstance(a, argparse._SubParsersAction)), None):
            command = sub.choices.get(argv[depth]) if len(argv) > depth else None
            depth += 1
            if command is None:
                return set(), [], 1
        actions = command._actions
    elif len(argv) > 2 and argv[1] == "-m":
        source = REPO / "src" / (argv[2].replace(".", "/") + ".py")
        text = source.read_text()
        options = set(re.findall(r"""add_argument\(\s*["'](--?[\w-]+)["']""", text))
        positionals = len(re.findall(r"""add_argument\(\s*["']([a-z][\w]*)["']""", text))
        required = re.findall(r"""add_argument\(\s*["'](--?[\w-]+)["'][^)]*required=True""", text)
        return options | {"-h", "--help"}, required, positionals
    else:
        return None
    options, required, positionals = set(), [], 0
    for action in actions:
        options.update(action.option_strings)
        if action.option_strings and action.required:
            required.append(action.option_strings[-1])
        if not action.option_strings and action.nargs not in ("?", "*"):
            positionals += 1
    return options, required, positionals
