"""Kubernetes NetworkPolicy semantics (networking.k8s.io/v1), evaluated over rendered policies,
so that a flow table can be checked against them without a cluster.

What is modelled, as the API reference and the NetworkPolicy concept page define it:
- A Pod is isolated for ingress (egress) when at least one policy of its namespace selects it
  (`podSelector`, `{}` = every Pod of the namespace) and lists `Ingress` (`Egress`) in
  `policyTypes`; without `policyTypes`, a policy has `Ingress`, plus `Egress` when it has egress
  rules. A non-isolated direction allows everything; an isolated one allows the union of the
  selecting policies' rules (policies are additive, none denies).
- A connection is allowed when the source's egress allows it and the destination's ingress
  allows it (a non-Pod end, e.g. the API server or a host outside the cluster, has no policy).
- A rule with no `from`/`to` (or an empty list) matches every peer; with no `ports` (or an
  empty list) every port. A peer is a `podSelector` alone (Pods of the policy's namespace), a
  `namespaceSelector` alone (every Pod of the matching namespaces), both (those Pods of those
  namespaces), or an `ipBlock` (`cidr` minus `except`, matched on the address).
- A port is a number (with `endPort`: a range) or a container port's name, looked up on the
  destination Pod; the protocol defaults to TCP; a port entry without `port` is every port.
- Label selectors: `matchLabels` and `matchExpressions` (In, NotIn, Exists, DoesNotExist); an
  empty selector selects everything.
Not modelled: the kubelet's probes and `kubectl port-forward` (from the node or inside the Pod's
network namespace, which policies do not restrict in the common implementations).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict = field(hash=False, compare=False)
    # named container ports: name -> (number, protocol)
    ports: dict = field(default_factory=dict, hash=False, compare=False)
    ip: str = "10.244.0.10"

    def __str__(self):
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Host:
    """An address that is no Pod of the cluster (the API server, a Redis or model host outside)."""

    name: str
    ip: str

    def __str__(self):
        return f"{self.name} ({self.ip})"


def selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    assert not unknown, f"unknown selector fields {unknown}"
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        assert op in ("In", "NotIn", "Exists", "DoesNotExist"), op
    return True


def policy_types(spec: dict) -> set[str]:
    if spec.get("policyTypes"):
        return set(spec["policyTypes"])
    return {"Ingress"} | ({"Egress"} if "egress" in spec else set())


class Network:
    def __init__(self, policies: list[dict], namespaces: dict[str, dict]):
        """`policies`: NetworkPolicy objects (metadata.namespace set); `namespaces`: name -> labels
        (the API server's kubernetes.io/metadata.name label is added)."""
        self.policies = policies
        self.namespaces = {n: {**labels, "kubernetes.io/metadata.name": n} for n, labels in namespaces.items()}

    def _selecting(self, pod: Pod, direction: str) -> list[dict]:
        return [
            p
            for p in self.policies
            if p["metadata"]["namespace"] == pod.namespace
            and direction in policy_types(p["spec"])
            and selects(p["spec"].get("podSelector") or {}, pod.labels)
        ]

    def _peer_matches(self, peer: dict, policy_ns: str, other) -> bool:
        if "ipBlock" in peer:
            address = ipaddress.ip_address(other.ip)
            block = peer["ipBlock"]
            return address in ipaddress.ip_network(block["cidr"]) and not any(
                address in ipaddress.ip_network(e) for e in block.get("except") or []
            )
        if not isinstance(other, Pod):
            return False
        if "namespaceSelector" in peer:
            ns_labels = self.namespaces.get(other.namespace, {"kubernetes.io/metadata.name": other.namespace})
            if not selects(peer["namespaceSelector"] or {}, ns_labels):
                return False
        elif other.namespace != policy_ns:
            return False
        return selects(peer.get("podSelector") or {}, other.labels)

    @staticmethod
    def _port_matches(entry: dict, dst, port: int, protocol: str) -> bool:
        if entry.get("protocol", "TCP") != protocol:
            return False
        if "port" not in entry:
            return True
        wanted = entry["port"]
        if isinstance(wanted, str):
            if not isinstance(dst, Pod) or wanted not in dst.ports:
                return False
            number, proto = dst.ports[wanted]
            return number == port and proto == protocol
        end = entry.get("endPort", wanted)
        return wanted <= port <= end

    def _allowed(self, direction: str, subject, other, dst, port: int, protocol: str) -> tuple[bool, str]:
        policies = self._selecting(subject, direction)
        if not policies:
            return True, f"{subject} is not isolated for {direction.lower()}"
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in policies:
            for rule in policy["spec"].get(key) or []:
                peers = rule.get(peers_key) or []
                if peers and not any(self._peer_matches(p, policy["metadata"]["namespace"], other) for p in peers):
                    continue
                ports = rule.get("ports") or []
                if ports and not any(self._port_matches(e, dst, port, protocol) for e in ports):
                    continue
                return True, f"allowed by {policy['metadata']['name']}"
        names = ", ".join(p["metadata"]["name"] for p in policies)
        return False, f"{direction.lower()} of {subject} is isolated by {names} and no rule admits it"

    def allows(self, src, dst, port: int, protocol: str = "TCP") -> tuple[bool, str]:
        """Whether a connection from `src` to `dst`:`port` is allowed, and why (or why not)."""
        if isinstance(src, Pod):
            ok, why = self._allowed("Egress", src, dst, dst, port, protocol)
            if not ok:
                return ok, why
        if isinstance(dst, Pod):
            return self._allowed("Ingress", dst, src, dst, port, protocol)
        return True, "the destination is no Pod"
