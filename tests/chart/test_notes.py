"""templates/NOTES.txt: what `helm install` prints is true for the release (waits sized for
what the values ask, the Services it names exist or are KubeRay's, how to sign in)."""

from __future__ import annotations

import re

from k8s_tools import CHART, helm


def notes(*sets: str) -> str:
    args = ["install", "mt", str(CHART), "--dry-run=client", "--namespace", "marcelle-torch"]
    for s in sets:
        args += ["--set", s]
    return helm(*args).stdout.split("NOTES:", 1)[1]


def wait_minutes(text: str) -> int:
    (timeout,) = re.findall(r"wait rayservice/\S+ --for=condition=Ready --timeout=(\d+)m", text)
    return int(timeout)


def test_cpu_wait():
    assert wait_minutes(notes()) >= 15


def test_gpu_wait_covers_a_cold_gpu_node_and_a_large_image_pull():
    text = notes("gpu.enabled=true")
    assert wait_minutes(text) >= 30
    assert "first" in text and "prediction starts one" in text
    # With a warm replica, Ready itself waits for the GPU node.
    text = notes("gpu.enabled=true", "gpu.modelMinReplicas=1", "gpu.minReplicas=1", "gpu.replicas=1")
    assert wait_minutes(text) >= 30 and "prediction starts one" not in text


def test_port_forwards_name_the_services_kuberay_creates():
    text = notes()
    # KubeRay v1.7.0 (common/service.go): <rayservice>-head-svc and <rayservice>-serve-svc.
    assert "port-forward svc/mt-marcelle-torch-head-svc 8265:8265" in text
    assert "port-forward svc/mt-marcelle-torch-serve-svc 8000:8000" in text
    assert "port-forward svc/mt-marcelle-torch-webapp 8080:80" in text


def test_network_policy_notes_say_which_operator_is_admitted_and_how_to_check():
    text = notes()
    assert "from Pods labelled app.kubernetes.io/name=kuberay-operator in any namespace" in text
    assert "kubectl get pods -A -l app.kubernetes.io/name=kuberay-operator" in text
    assert "--use-kubernetes-proxy" in text and "networkPolicy.kuberayOperator.extraFrom" in text
    text = notes("networkPolicy.kuberayOperator.namespace=kuberay-system")
    assert "in namespace kuberay-system" in text
    assert "kubectl get pods -n kuberay-system -l app.kubernetes.io/name=kuberay-operator" in text
    assert "NetworkPolicies:" not in notes("networkPolicy.enabled=false")


def test_training_notes_name_the_trainer_its_models_and_the_claim_to_check():
    text = notes("training.enabled=true")
    assert "Deployment mt-marcelle-torch-trainer takes the training runs of digits" in text
    assert "kubectl -n marcelle-torch get pvc mt-marcelle-torch-model-store" in text
    assert "GPU(s) each" not in text
    gpu = notes("training.enabled=true", "training.gpus=1", "modelStore.existingClaim=team-store")
    assert '(1 GPU(s) each, on nodes labelled {"marcelle-torch.dev/node-pool":"gpu"})' in gpu
    assert "get pvc team-store" in gpu
    assert "Model store: claim mt-marcelle-torch-model-store" in notes("modelStore.enabled=true")
    assert "trainer" not in notes() and "model store" not in notes().lower()
