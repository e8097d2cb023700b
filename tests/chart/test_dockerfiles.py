"""Policy checks of the Dockerfiles (no Docker here, and no hadolint): pinned bases, non-root
final user, pinned torch from the PyTorch index, sources that exist and are not docker-ignored,
and an nginx template whose variables are all provided."""

from __future__ import annotations

import fnmatch
import re
import tomllib

import pytest

from k8s_tools import REPO

NEEDS_HELM = False
DOCKERFILES = {name: REPO / "services" / name / "Dockerfile" for name in ("ray", "worker", "backend", "frontend")}


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
        if image in seen or re.fullmatch(r"[\w-]*\$\{\w+\}[\w-]*", image):
            continue  # an earlier stage (possibly chosen by a build arg)
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


def test_torch_pinned_from_the_pytorch_index():
    pin = next(d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
               if d.startswith("torch=="))
    version = pin.split("==")[1]
    for name in ("ray", "worker", "frontend"):
        text = DOCKERFILES[name].read_text()
        assert f"TORCH_VERSION={version}" in text, f"{name}: torch must be pinned to {version}"
        assert re.search(r"pip install --no-cache-dir --index-url \S*(download\.pytorch\.org/whl/cpu|TORCH_INDEX_URL)",
                         text), f"{name}: torch must come from the PyTorch index"
    ray = DOCKERFILES["ray"].read_text()
    assert "https://download.pytorch.org/whl/cpu" in ray and re.search(r"download\.pytorch\.org/whl/cu12\d", ray)


def test_ray_bases_match_the_ray_pin():
    pin = next(d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
               if d.startswith("ray["))
    version = pin.split("==")[1]
    images = [image for image, _, _ in stages(DOCKERFILES["ray"]) if image.startswith("rayproject/")]
    assert f"rayproject/ray:{version}-py311-cpu" in images
    assert any(re.fullmatch(rf"rayproject/ray:{re.escape(version)}-py311-cu12\d", i) for i in images), images
    text = DOCKERFILES["ray"].read_text()
    assert "marcelle-torch train digits" in text, "weights must be baked in at build time"


def dockerignore_patterns():
    return [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


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
    for path in ("services/frontend/node_modules", ".venv", ".git", "services/frontend/dist", ".cache"):
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
    from k8s_tools import CHART

    chart = (CHART / "templates" / "webapp-deployment.yaml").read_text()
    for var in env_vars - {"NGINX_LOCAL_RESOLVERS"}:  # computed by the image's entrypoint
        assert f"{var}=" in dockerfile, f"nginx.conf uses ${{{var}}}, not defaulted in the Dockerfile"
        assert f"name: {var}" in chart, f"nginx.conf uses ${{{var}}}, not set by the chart"
    assert "NGINX_ENTRYPOINT_LOCAL_RESOLVERS" in dockerfile and "NGINX_ENTRYPOINT_LOCAL_RESOLVERS" in chart
    assert "/etc/nginx/templates/default.conf.template" in dockerfile


def test_backend_image_runs_the_projects_start_script():
    text = DOCKERFILES["backend"].read_text()
    assert "npm ci --omit=dev" in text and 'ENTRYPOINT ["node", "start.js"]' in text
    assert "NODE_CONFIG_DIR=/app/backend/config" in text
