"""templates/ingress.yaml and templates/httproute.yaml: the web app (whose nginx proxies
/serve/ and /backend/) behind an Ingress or a Gateway API HTTPRoute, both rendered and checked.

Upstream facts encoded here (kubernetes-sigs/gateway-api v1.4.0, standard channel):
- apis/v1/httproute_types.go: HTTPRoute `gateway.networking.k8s.io/v1`; rules[].matches[].path
  type `PathPrefix`; rules[].timeouts.request / backendRequest are Durations
  (`^([0-9]{1,5}(h|m|s|ms)){1,4}$`, apis/v1/shared_types.go Duration).
- apis/v1/shared_types.go BackendRef/BackendObjectReference: `port` is required when the
  referent is a Kubernetes Service; hostnames follow the Hostname pattern there.
"""

from __future__ import annotations

import re

from k8s_tools import by_kind, ci_values, one, render, render_text

HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")


def webapp_service(objects):
    return one(objects, "Service", "-webapp")


def test_neither_by_default():
    objects = render(ci_values("default"))
    assert not by_kind(objects, "Ingress") and not by_kind(objects, "HTTPRoute")


def test_ingress_routes_everything_to_the_webapp_service():
    objects = render(ci_values("ingress"))
    ingress = one(objects, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "marcelle-torch.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/" and path["pathType"] == "Prefix"
    service = webapp_service(objects)
    assert path["backend"]["service"]["name"] == service["metadata"]["name"]
    assert path["backend"]["service"]["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["tls"] == [{"hosts": ["marcelle-torch.example.com"], "secretName": "marcelle-torch-tls"}]


def test_httproute_routes_everything_to_the_webapp_service():
    objects = render(ci_values("httproute"))
    route = one(objects, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [
        {"name": "shared-gateway", "namespace": "gateway-system", "sectionName": "https"}
    ]
    assert all(HOSTNAME.match(h) for h in route["spec"]["hostnames"])
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    (backend,) = rule["backendRefs"]
    service = webapp_service(objects)
    assert backend["name"] == service["metadata"]["name"]
    # A Service backendRef must name a port, one the Service has.
    assert backend["port"] in {p["port"] for p in service["spec"]["ports"]}
    assert all(DURATION.match(v) for v in rule["timeouts"].values())
    assert route["metadata"]["labels"]["app.kubernetes.io/instance"] == "mt"


def test_httproute_needs_a_gateway():
    result = render_text(sets=("httpRoute.enabled=true",), check=False)
    assert result.returncode != 0 and "httpRoute.parentRefs: name the Gateway" in result.stderr


def test_both_can_be_on_together():
    objects = render(ci_values("ingress"), ci_values("httproute"))
    assert one(objects, "Ingress") and one(objects, "HTTPRoute")
