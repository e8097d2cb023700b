"""Policy checks of the Dockerfiles (no Docker here, and no hadolint): pinned bases, non-root
final user, pinned torch from the PyTorch index, sources that exist and are not docker-ignored,
an nginx template whose variables are all provided, weights trained once in the weights image
and copied to one path, no Ray in the worker image, Node versions that the npm packages run on,
and Ray's arm64 tags."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from k8s_tools import REPO

NEEDS_HELM = False
DOCKERFILES = {
    name: REPO / "services" / name / "Dockerfile" for name in ("weights", "ray", "worker", "backend", "frontend")
}
# The images that copy the weights image's files.
CONSUMERS = ("ray", "worker", "frontend")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(path):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("#") and not current:
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(path):
    """[(image, stage name, [instructions])]"""
    result = []
    for word, args in instructions(path):
        if word == "FROM":
            parts = [p for p in args.split() if not p.startswith("--")]
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            result.append((parts[0], name, []))
        elif result:
            result[-1][2].append((word, args))
    return result


@pytest.mark.parametrize("name", DOCKERFILES)
def test_bases_are_pinned(name):
    seen = []
    for image, stage, _ in stages(DOCKERFILES[name]):
        if image in seen or "${" in image or image == "scratch":
            continue  # an earlier stage (possibly chosen by a build arg), the weights image, or empty
        repo, _, tag = image.partition("@")[0].rpartition(":")
        assert repo and tag, f"{name}: FROM {image} has no tag"
        assert tag != "latest" and "latest" not in image, f"{name}: FROM {image} uses latest"
        assert re.search(r"\d", tag), f"{name}: FROM {image}: tag must name a version"
        if stage:
            seen.append(stage)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_args_in_from_lines_are_global(name):
    # Docker only expands ARGs declared before the first FROM in FROM lines.
    global_args, seen_from = set(), False
    for word, args in instructions(DOCKERFILES[name]):
        if word == "ARG" and not seen_from:
            global_args.add(args.split("=")[0])
        elif word == "FROM":
            seen_from = True
            for var in re.findall(r"\$\{?(\w+)", args):
                assert var in global_args, f"{name}: FROM uses ${{{var}}}, which is not declared before the first FROM"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_user_is_not_root(name):
    image, stage, body = stages(DOCKERFILES[name])[-1]
    users = [args for word, args in body if word == "USER"]
    if not users and name == "frontend":
        pytest.fail("frontend: the final stage must say USER (nginx-unprivileged's 101)")
    assert users, f"{name}: final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{name}: runs as root"
    assert user.isdigit(), f"{name}: USER should be numeric so runAsNonRoot can be verified"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_package_installs_are_lean(name):
    for word, args in instructions(DOCKERFILES[name]):
        if word != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            if re.search(r"\bpip install\b", command):
                assert "--no-cache-dir" in command, f"{name}: {command.strip()}"
            if "apt-get install" in command:
                assert "--no-install-recommends" in command, f"{name}: {command.strip()}"
            if re.search(r"\bnpm (install|i)\b", command):
                pytest.fail(f"{name}: use `npm ci` (lockfile) instead of: {command.strip()}")


def constraint_pins() -> dict[str, str]:
    """constraints.txt: the exact versions the images, CI and `make` install."""
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return {name.lower(): version for name, version in (line.split("==") for line in lines if "==" in line)}


def test_torch_pinned_from_the_pytorch_index():
    version = constraint_pins()["torch"]
    # The library's range (pyproject) holds the pinned version.
    dep = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    low, high = re.fullmatch(r"torch>=([\d.]+),<([\d.]+)", dep).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= as_tuple(version) < as_tuple(high), f"{dep} does not hold the pinned torch {version}"
    for name in ("weights", "ray", "worker"):
        text = DOCKERFILES[name].read_text()
        assert f"TORCH_VERSION={version}" in text, f"{name}: torch must be pinned to {version}"
        assert re.search(
            r"pip install --no-cache-dir --index-url \S*(download\.pytorch\.org/whl/cpu|TORCH_INDEX_URL)", text
        ), f"{name}: torch must come from the PyTorch index"
    ray = DOCKERFILES["ray"].read_text()
    assert "https://download.pytorch.org/whl/cpu" in ray and re.search(r"download\.pytorch\.org/whl/cu12\d", ray)


def test_ray_bases_match_the_ray_pin():
    version = constraint_pins()["ray"]
    images = [image for image, _, _ in stages(DOCKERFILES["ray"]) if image.startswith("rayproject/")]
    assert f"rayproject/ray:{version}-py311-cpu" in images
    assert any(re.fullmatch(rf"rayproject/ray:{re.escape(version)}-py311-cu12\d", i) for i in images), images
    text = DOCKERFILES["ray"].read_text()
    assert '"/tmp/marcelle-torch[serve]"' in text, "the Ray image installs the package with its [serve] extra"


def test_ray_image_has_arm64_bases_chosen_by_target_arch():
    # Ray's tags are {version}-{python}-{platform}[-{architecture}], -aarch64 for arm64
    # (ray-project/ray docker/ray/README.md); BuildKit sets TARGETARCH to amd64 or arm64.
    version = constraint_pins()["ray"]
    named = {stage: image for image, stage, _ in stages(DOCKERFILES["ray"]) if stage}
    assert named.get("base-cpu-amd64") == f"rayproject/ray:{version}-py311-cpu"
    assert named.get("base-cpu-arm64") == f"rayproject/ray:{version}-py311-cpu-aarch64"
    gpu_amd64 = named.get("base-gpu-amd64", "")
    assert re.fullmatch(rf"rayproject/ray:{re.escape(version)}-py311-cu12\d", gpu_amd64), gpu_amd64
    assert named.get("base-gpu-arm64") == f"{gpu_amd64}-aarch64"
    final = stages(DOCKERFILES["ray"])[-1][0]
    assert final == "base-${VARIANT}-${TARGETARCH:-amd64}", final


# ------------------------------------------------------------------ weights trained once


def global_args(path) -> dict[str, str]:
    out = {}
    for word, args in instructions(path):
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = args.partition("=")
            out[name] = default
    return out


def test_weights_are_trained_once_in_the_weights_image():
    text = DOCKERFILES["weights"].read_text()
    for model in ("digits", "digits-generator"):
        assert f"marcelle-torch train {model}" in text, f"weights image does not train {model}"
    assert "marcelle-torch export-onnx digits --out /opt/marcelle-torch/onnx/digits" in text
    assert "MARCELLE_TORCH_CACHE=/opt/marcelle-torch/cache" in text
    assert "sha256sum -- *.pt > SHA256SUMS" in text
    # The bundle's manifest must name the digest of the digits weights it was exported from.
    assert "['created_from']['weights_sha256']" in text
    image, _, body = stages(DOCKERFILES["weights"])[-1]
    assert image == "scratch", "the weights image carries only files"
    copies = [args for word, args in body if word == "COPY"]
    assert "--from=train /opt/marcelle-torch/cache/weights /weights" in copies, copies
    assert "--from=train /opt/marcelle-torch/onnx /onnx" in copies, copies


def weights_check_command() -> str:
    """The weights image's RUN that checks the bundle against SHA256SUMS (the train stage)."""
    _, _, body = stages(DOCKERFILES["weights"])[0]
    (command,) = [args for word, args in body if word == "RUN" and "SHA256SUMS" in args and "model.json" in args]
    return command


def bundle_beside_weights(root: Path, monkeypatch) -> tuple[Path, Path]:
    """The weights image's layout under ``root`` (``root`` standing for /opt/marcelle-torch): a digits
    weights file in the cache, and the digits bundle's model.json as the exporter writes it for them."""
    import onnx
    from onnx import TensorProto, helper

    from marcelle_torch.models import get_spec
    from marcelle_torch.onnx.export import INPUT_NAME, bundle_metadata, output_name

    monkeypatch.setenv("MARCELLE_TORCH_CACHE", str(root / "cache"))
    spec = get_spec("digits")
    weights = root / "cache" / "weights" / f"{spec.name}-v{spec.version}.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"the digits weights, as trained in the image")
    # The manifest's digest does not depend on the graph: a one-node graph with the bundle's names.
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT_NAME], [output_name(spec)])],
        "digits",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info(output_name(spec), TensorProto.FLOAT, ["batch", 10])],
    )
    bundle = root / "onnx" / "digits"
    bundle.mkdir(parents=True)
    onnx.save(helper.make_model(graph), bundle / "model.onnx")
    metadata = bundle_metadata(spec, bundle / "model.onnx", 18, "dynamo", [])
    (bundle / "model.json").write_text(json.dumps(metadata))
    return weights, bundle / "model.json"


def run_weights_check(root: Path) -> subprocess.CompletedProcess:
    """The Dockerfile's own check, run in its WORKDIR with ``root`` for /opt/marcelle-torch."""
    command = weights_check_command().replace("/opt/marcelle-torch", str(root))
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # its `python`
    return subprocess.run(
        ["bash", "-c", command],
        cwd=root / "cache" / "weights",
        env=dict(os.environ, PATH=path),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_weights_image_check_accepts_the_bundle_exported_from_its_weights(tmp_path, monkeypatch):
    """The exporter's manifest (created_from.weights_sha256) is what the weights image's check reads:
    a bundle made from the weights in SHA256SUMS passes it."""
    weights, manifest = bundle_beside_weights(tmp_path, monkeypatch)
    check = run_weights_check(tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(manifest.read_text())["created_from"]["weights_sha256"] in check.stdout
    assert f"  {weights.name}" in check.stdout


def test_the_weights_image_check_refuses_a_bundle_of_other_weights(tmp_path, monkeypatch):
    weights, _ = bundle_beside_weights(tmp_path, monkeypatch)
    weights.write_bytes(b"weights trained again after the export")
    check = run_weights_check(tmp_path)
    assert check.returncode != 0
    assert "the ONNX bundle was not made from the digits weights in SHA256SUMS" in check.stderr


@pytest.mark.parametrize("name", CONSUMERS)
def test_images_copy_the_weights_image_and_train_nothing(name):
    path = DOCKERFILES[name]
    default = global_args(path).get("WEIGHTS_IMAGE")
    assert default and re.fullmatch(r"marcelle-torch/weights:[\w.-]+", default), (
        f"{name}: declare ARG WEIGHTS_IMAGE=marcelle-torch/weights:<tag> before the first FROM"
    )
    assert ("${WEIGHTS_IMAGE}", "weights") in [(image, stage) for image, stage, _ in stages(path)], (
        f"{name}: needs `FROM ${{WEIGHTS_IMAGE}} AS weights`"
    )
    text = path.read_text()
    assert "marcelle-torch train" not in text, f"{name}: trains its own weights"
    assert "export-onnx" not in text, f"{name}: exports its own ONNX bundle"
    copies = [args for word, args in instructions(path) if word == "COPY" and "--from=weights" in args]
    if name == "frontend":
        assert any(args.endswith("/onnx ./public/onnx") for args in copies), copies
    else:
        # One path everywhere: $MARCELLE_TORCH_CACHE/weights, where resolve_weights looks.
        assert any(args.endswith("/weights /opt/marcelle-torch/cache/weights") for args in copies), copies
        assert "MARCELLE_TORCH_CACHE=/opt/marcelle-torch/cache" in text
        assert "sha256sum -c SHA256SUMS" in text, f"{name}: check the copied weights against SHA256SUMS"


def test_weights_path_is_where_the_package_looks(tmp_path, monkeypatch):
    from marcelle_torch.models import get_spec
    from marcelle_torch.models.weights import trained_weights_path

    monkeypatch.setenv("MARCELLE_TORCH_CACHE", str(tmp_path))
    for model in ("digits", "digits-generator"):
        assert trained_weights_path(get_spec(model)).parent == tmp_path / "weights"


def makefile_recipe(target: str) -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return [lines[start]] + recipe


def test_the_makefile_builds_the_weights_image_first_and_passes_it_on():
    cpu = makefile_recipe("images-cpu")
    builds = [line for line in cpu[1:] if line.startswith("docker build")]
    assert builds and "services/weights/Dockerfile" in builds[0] and "-t $(WEIGHTS_IMAGE)" in builds[0], builds
    assert "images-cpu" in makefile_recipe("images")[0], "make images must build images-cpu (weights first)"
    for line in builds[1:] + makefile_recipe("images")[1:]:
        if any(f"services/{name}/Dockerfile" in line for name in CONSUMERS):
            assert "--build-arg WEIGHTS_IMAGE=$(WEIGHTS_IMAGE)" in line, line


# ---------------------------------------------------------------------------- no Ray in worker


def test_worker_image_installs_no_ray():
    assert not [d for d in PYPROJECT["project"]["dependencies"] if re.match(r"ray\b", d)], (
        "Ray is a base dependency: the worker image (plain install) would carry it"
    )
    text = DOCKERFILES["worker"].read_text()
    installs = [args for word, args in instructions(DOCKERFILES["worker"]) if word == "RUN" and "pip install" in args]
    assert installs and not any("[serve]" in args or re.search(r"\bray\b", args.split("&&")[0]) for args in installs)
    assert not any(image.startswith("rayproject/") for image, _, _ in stages(DOCKERFILES["worker"]))
    assert "find_spec('ray')" in text, "the worker build should fail if Ray is installed"


# --------------------------------------------------------------------------------------- Node


def node_major(name: str, stage: str | None = None) -> int:
    images = [
        image
        for image, st, _ in stages(DOCKERFILES[name])
        if image.startswith("node:") and (stage is None or st == stage)
    ]
    assert images, f"{name}: no node base image"
    return int(re.match(r"node:(\d+)\.", images[0]).group(1))


# Node release lines (node-releases 2.0.65, data/release-schedule/release-schedule.json).
NODE_END_OF_LIFE = {18: "2025-04-30", 20: "2026-04-30", 22: "2027-04-30", 24: "2028-04-30", 26: "2029-04-30"}
NODE_ACTIVE_LTS = 26  # "Lithium", Active LTS from 2026-10-28 to 2027-10-20


def test_no_end_of_life_node():
    for name in ("backend", "frontend"):
        major = node_major(name)
        assert major % 2 == 0 and major >= 22, f"{name}: node {major} is end-of-life or not an LTS line"


def test_webapp_builds_on_the_active_lts():
    major = node_major("frontend", "build")
    assert major == NODE_ACTIVE_LTS, f"web app build on node {major}, the Active LTS is {NODE_ACTIVE_LTS}"
    # One lock for the npm workspace (the web app and the marcelle-torch npm package).
    lock = json.loads((REPO / "package-lock.json").read_text())
    engines = lock["packages"]["node_modules/vite"]["engines"]["node"]
    assert engines == "^20.19.0 || >=22.12.0", f"vite's engines changed ({engines}): check node {major}"


def test_backend_node_is_the_newest_lts_that_nedb_runs_on():
    # nedb 1.8.0 (lib/model.js, lib/datastore.js) calls util.isDate, removed in Node 23.0.0: on
    # Node 24 or 26 every create of @marcellejs/backend 0.6.5 (nedb storage) fails with a 500.
    lock = json.loads((REPO / "services" / "backend" / "package-lock.json").read_text())
    nedb = lock["packages"].get("node_modules/nedb", {}).get("version")
    model = REPO / "services" / "backend" / "node_modules" / "nedb" / "lib" / "model.js"
    if model.is_file():
        assert ("util.isDate(" in model.read_text()) == (nedb == "1.8.0"), "nedb's util.isDate use changed"
    major = node_major("backend")
    if nedb == "1.8.0":
        assert major == 22, f"backend on node {major}: nedb {nedb} needs util.isDate (Node <= 22)"
    else:
        pytest.fail(f"nedb is {nedb}: check whether the backend can move to node {NODE_ACTIVE_LTS}")


def dockerignore_patterns():
    return [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def ignored(rel: str) -> bool:
    for pattern in dockerignore_patterns():
        pattern = pattern.rstrip("/")
        candidates = [rel] + [rel[: m.start()] for m in re.finditer("/", rel)]
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.replace("**/", "")) for c in candidates):
            return True
    return False


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_sources_exist_and_reach_the_build(name):
    for word, args in instructions(DOCKERFILES[name]):
        if word not in ("COPY", "ADD") or "--from=" in args:
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        for source in parts[:-1]:
            if source == "README.md" and not (REPO / source).exists():
                continue  # written with the project README; pyproject names it too
            assert (REPO / source).exists(), f"{name}: COPY {source}: no such path in the repository"
            assert not ignored(source.rstrip("/")), f"{name}: COPY {source} is excluded by .dockerignore"


def test_dockerignore_keeps_heavy_local_state_out():
    for path in (
        "node_modules",
        "services/frontend/node_modules",
        "packages/marcelle-torch/node_modules",
        ".venv",
        ".git",
        "services/frontend/dist",
        ".cache",
    ):
        assert ignored(path), f".dockerignore should exclude {path}"


def test_nginx_template_proxies_and_every_variable_is_set():
    conf = (REPO / "services" / "frontend" / "nginx.conf").read_text()

    def block(location):
        match = re.search(rf"location {location} \{{(.*?)\n    \}}", conf, re.S)
        assert match, f"nginx.conf has no `location {location}` block"
        return match.group(1)

    assert "proxy_pass $serve_upstream" in block("/serve/")
    backend = block("/backend/")
    assert "proxy_set_header Upgrade $http_upgrade" in backend and "$connection_upgrade" in backend
    assert "location = /healthz" in conf and "location = /config.json" in conf
    env_vars = set(re.findall(r"\$\{(\w+)\}", conf))
    dockerfile = DOCKERFILES["frontend"].read_text()
    from k8s_tools import CHART, one, render

    chart = (CHART / "templates" / "webapp-deployment.yaml").read_text()
    # The model store's variable is set (by the store's helper) only where the chart mounts one.
    webapp = one(render(sets=("modelStore.enabled=true",)), "Deployment", "-webapp")
    rendered = {e["name"] for e in webapp["spec"]["template"]["spec"]["containers"][0]["env"]}
    for var in env_vars - {"NGINX_LOCAL_RESOLVERS"}:  # computed by the image's entrypoint
        assert f"{var}=" in dockerfile, f"nginx.conf uses ${{{var}}}, not defaulted in the Dockerfile"
        assert var in rendered, f"nginx.conf uses ${{{var}}}, not set by the chart"
    assert "NGINX_ENTRYPOINT_LOCAL_RESOLVERS" in dockerfile and "NGINX_ENTRYPOINT_LOCAL_RESOLVERS" in chart
    assert "/etc/nginx/templates/default.conf.template" in dockerfile


def test_backend_image_runs_the_projects_start_script():
    text = DOCKERFILES["backend"].read_text()
    assert "npm ci --omit=dev" in text and 'ENTRYPOINT ["node", "start.js"]' in text
    assert "NODE_CONFIG_DIR=/app/backend/config" in text


def test_backend_image_copies_every_local_module_the_start_script_loads():
    backend = REPO / "services" / "backend"
    copied = {
        Path(source).name
        for word, args in instructions(DOCKERFILES["backend"])
        if word == "COPY" and "--from=" not in args
        for source in args.split()[:-1]
    }
    needed, todo = set(), ["start.js"]
    while todo:
        name = todo.pop()
        needed.add(name)
        for module in re.findall(r"require\('\./([\w-]+)'\)", (backend / name).read_text()):
            if f"{module}.js" not in needed:
                todo.append(f"{module}.js")
    assert needed <= copied, f"the backend image does not copy {sorted(needed - copied)}"


def test_python_images_and_make_install_with_the_constraints():
    for name in ("weights", "ray", "worker"):
        installs = [a for w, a in instructions(DOCKERFILES[name]) if w == "RUN" and "/tmp/marcelle-torch" in a]
        assert installs and all("-c /tmp/marcelle-torch/constraints.txt" in a for a in installs), name
    assert "-c constraints.txt" in " ".join(makefile_recipe("$(BIN)/marcelle-torch"))
    pins = constraint_pins()
    assert "marcelle-torch" not in pins, "constraints.txt must not pin the package itself"
