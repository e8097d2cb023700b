"""Web app templates: Deployment, Service, /config.json ConfigMap, optional Ingress."""

from __future__ import annotations

import json

from k8s_tools import by_kind, ci_values, one, render


def test_config_json_points_at_the_same_origin_proxies():
    objects = render(ci_values("default"))
    config = json.loads(one(objects, "ConfigMap", "-webapp-config")["data"]["config.json"])
    assert config == {
        "serveUrl": "/serve",
        "backendUrl": "/backend",
        "model": "digits",
        "generatorModel": "digits-generator",
        "onnxBundle": "onnx/digits/",
    }
    pod = one(objects, "Deployment", "-webapp")["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"].endswith("/config.json") and mount["subPath"] == "config.json"


def test_nginx_upstreams_are_the_serve_and_backend_services():
    container = one(render(ci_values("default")), "Deployment", "-webapp")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # KubeRay names the Serve Service <rayservice>-serve-svc.
    assert env["SERVE_UPSTREAM"] == "mt-marcelle-torch-serve-svc.marcelle-torch.svc.cluster.local:8000"
    assert env["BACKEND_UPSTREAM"] == "mt-marcelle-torch-backend.marcelle-torch.svc.cluster.local:3030"
    assert env["NGINX_PORT"] == "8080"


def test_service_is_the_one_port_forward_target():
    objects = render(ci_values("default"))
    service = one(objects, "Service", "-webapp")
    assert service["spec"]["ports"][0]["port"] == 80
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_ingress_optional():
    assert not by_kind(render(ci_values("default")), "Ingress")
    ingress = one(render(ci_values("ingress")), "Ingress")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "marcelle-torch.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"]["name"].endswith("-webapp")
    assert ingress["spec"]["tls"][0]["secretName"] == "marcelle-torch-tls"
    assert ingress["spec"]["ingressClassName"] == "nginx"
