{{/* Names, labels, images and the shared securityContexts of the chart. */}}

{{- define "mt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Kept short: KubeRay appends suffixes (-head-svc, -serve-svc, -<hash>) to the RayService name. */}}
{{- define "mt.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "mt.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: marcelle-torch
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component; call with (dict "ctx" $ "component" "backend"). */}}
{{- define "mt.componentLabels" -}}
{{ include "mt.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mt.componentSelector" -}}
{{ include "mt.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every Pod of the release, Ray Pods included: what the default-deny NetworkPolicy selects. */}}
{{- define "mt.releasePodSelector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: marcelle-torch
{{- end }}

{{/* Pod template labels of a Deployment's Pods; call with (dict "ctx" $ "component" "backend"). */}}
{{- define "mt.podLabels" -}}
{{ include "mt.componentSelector" . }}
app.kubernetes.io/part-of: marcelle-torch
{{- end }}

{{/*
Ray Pod template labels. KubeRay (v1.7.0, common/pod.go labelPod) lets template labels override
its own, and the RayService's head Service selects app.kubernetes.io/name=kuberay
(common/service.go HeadServiceLabels, kuberay#2648): so no app.kubernetes.io/name here.
*/}}
{{- define "mt.rayPodLabels" -}}
{{ include "mt.releasePodSelector" . }}
app.kubernetes.io/component: ray
{{- end }}

{{/* Ray Pods of this release: KubeRay's ray.io/is-ray-node label plus the release. */}}
{{- define "mt.rayPodSelector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
ray.io/is-ray-node: "yes"
{{- end }}

{{/* The Ray version of the images: Chart.yaml's marcelle-torch/ray-version annotation. */}}
{{- define "mt.rayVersion" -}}
{{- $v := index .Chart.Annotations "marcelle-torch/ray-version" -}}
{{- if not (regexMatch "^[0-9]+\\.[0-9]+\\.[0-9]+$" ($v | default "")) }}{{ fail (printf "Chart.yaml: annotation marcelle-torch/ray-version must be a Ray version such as 2.60.0, got %q" $v) }}{{ end -}}
{{- $v -}}
{{- end }}

{{/* image reference; call with (dict "ctx" $ "image" .Values.x.image "path" "x.image" "suffix" "") */}}
{{- define "mt.image" -}}
{{- if eq .image.tag "latest" }}{{ fail (printf "%s.tag: \"latest\" is refused: pin a fixed tag (empty = the chart appVersion)" .path) }}{{ end -}}
{{- $tag := .image.tag | default (printf "%s%s" .ctx.Chart.AppVersion (.suffix | default "")) -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end }}

{{/*
The Ray head's ServiceAccount (its autoscaler sidecar patches the RayCluster). At most 50
characters and starting with a letter: KubeRay's utils.CheckName (v1.7.0) would otherwise clip
the name it puts on the head Pod, which then names an account that does not exist.
*/}}
{{- define "mt.rayServiceAccountName" -}}
{{- printf "%s-ray-head" (include "mt.fullname" .) | trunc 50 | trimSuffix "-" }}
{{- end }}

{{- define "mt.secretName" -}}
{{- printf "%s-secrets" (include "mt.fullname" .) }}
{{- end }}

{{/* The Secret with the JWT secret and the accounts: the chart's, or backend.existingSecret. */}}
{{- define "mt.credentialsSecretName" -}}
{{- .Values.backend.existingSecret | default (include "mt.secretName" .) }}
{{- end }}

{{- define "mt.backendHost" -}}
{{- printf "%s-backend.%s.svc.%s" (include "mt.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* The web app Service (port 80). */}}
{{- define "mt.webappHost" -}}
{{- printf "%s-webapp.%s.svc.%s" (include "mt.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* KubeRay names the Serve Service <rayservice>-serve-svc; it exists once the app is ready. */}}
{{- define "mt.serveHost" -}}
{{- printf "%s-serve-svc.%s.svc.%s" (include "mt.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* call with (dict "uid" n), and "gid" (default: uid) and "fsGroup" (default: gid) where they differ. */}}
{{- define "mt.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid | default .uid }}
fsGroup: {{ .fsGroup | default .gid | default .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "mt.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .readOnly }}
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Every Pod but the Ray head: no Kubernetes API token (nothing else talks to the API server). */}}
{{- define "mt.podCommon" -}}
automountServiceAccountToken: false
{{- include "mt.imagePullSecrets" . }}
{{- end }}

{{- define "mt.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The packaged Serve config (files/serve_config.yaml, a copy of
src/marcelle_torch/serving/serve_config.yaml kept in sync by `make chart-sync`).
The deployment of every model application (import_path
marcelle_torch.serving.app:build_model_app, one per model) gets autoscaling_config.max_replicas
from ray.modelMaxReplicas, or by the rule the package's config follows on one machine (one
1-CPU, 1-thread replica per core; bench/serve_latency.py): without GPUs, the CPU workers' CPU
limit x cpuWorkers.maxReplicas; with GPUs, gpu.maxReplicas x gpusPerPod / numGpusPerReplica;
and, with GPUs, ray_actor_options.num_gpus (the same override as
`marcelle-torch serve --num-gpus`) and autoscaling_config.min_replicas = gpu.modelMinReplicas;
without GPUs, min_replicas = ray.modelMinReplicas when that is set.
Each of `models` adds an application copied from the file's first model application
(`model-<name>`, route /v1/models/<name>:predict, args.model /models/<name>, the same other
args and deployment settings) and its folder to the router's args.models; its own
minReplicas, maxReplicas, numGpus and maxBatchSize override the rules above.
*/}}
{{- define "mt.serveConfig" -}}
{{- $raw := .Files.Get "files/serve_config.yaml" -}}
{{- if not $raw }}{{ fail "files/serve_config.yaml is missing from the chart: run `make chart-sync`" }}{{ end -}}
{{- $minReplicas := .Values.ray.modelMinReplicas -}}
{{- if .Values.gpu.enabled }}{{ $minReplicas = .Values.gpu.modelMinReplicas }}{{ end -}}
{{- $maxReplicas := .Values.ray.modelMaxReplicas -}}
{{- if kindIs "invalid" $maxReplicas -}}
{{- if .Values.gpu.enabled -}}
{{- $maxReplicas = max 1 (floor (divf (mul (int .Values.gpu.maxReplicas) (int .Values.gpu.gpusPerPod)) (float64 .Values.gpu.numGpusPerReplica))) | int -}}
{{- else -}}
{{- $cpu := toString .Values.ray.cpuWorkers.resources.limits.cpu -}}
{{- $cores := 0 -}}
{{- if hasSuffix "m" $cpu }}{{ $cores = div (int (trimSuffix "m" $cpu)) 1000 }}{{ else }}{{ $cores = int (floor (float64 $cpu)) }}{{ end -}}
{{- $maxReplicas = max 1 (mul (max 1 $cores) (int .Values.ray.cpuWorkers.maxReplicas)) | int -}}
{{- end -}}
{{- end -}}
{{- $config := fromYaml $raw -}}
{{- if hasKey $config "Error" }}{{ fail (printf "files/serve_config.yaml: %s" $config.Error) }}{{ end -}}
{{- include "mt.checkModels" . -}}
{{- $modelApp := "marcelle_torch.serving.app:build_model_app" -}}
{{- $template := dict -}}
{{- range $app := $config.applications -}}
{{- if and (not $template) (eq (get $app "import_path") $modelApp) }}{{ $template = deepCopy $app }}{{ end -}}
{{- end -}}
{{- $byApp := dict -}}
{{- $paths := list -}}
{{- range $m := .Values.models -}}
{{- if not $template }}{{ fail (printf "files/serve_config.yaml has no %s application to copy for models" $modelApp) }}{{ end -}}
{{- $name := printf "model-%s" $m.name -}}
{{- $app := deepCopy $template -}}
{{- $args := get $app "args" | default dict -}}
{{- $_ := set $args "model" (include "mt.modelPath" $m.name) -}}
{{- $deployment := first (get $app "deployments" | default (list (dict))) -}}
{{- $_ := set $deployment "name" $name -}}
{{- $_ := set $app "name" $name -}}
{{- $_ := set $app "route_prefix" (printf "/v1/models/%s:predict" $m.name) -}}
{{- $_ := set $app "args" $args -}}
{{- $_ := set $app "deployments" (list $deployment) -}}
{{- $_ := set $config "applications" (append $config.applications $app) -}}
{{- $_ := set $byApp $name $m -}}
{{- $paths = append $paths (include "mt.modelPath" $m.name) -}}
{{- end -}}
{{- range $app := $config.applications -}}
{{- if and $paths (eq (get $app "import_path") "marcelle_torch.serving.app:build_app") -}}
{{- $args := get $app "args" | default dict -}}
{{- $_ := set $args "models" (concat (get $args "models" | default list) $paths) -}}
{{- $_ := set $app "args" $args -}}
{{- end -}}
{{- if eq (get $app "import_path") $modelApp -}}
{{- $m := get $byApp (get $app "name") | default (dict) -}}
{{- $deployments := get $app "deployments" | default list -}}
{{- if not $deployments }}{{ $deployments = list (dict "name" (get $app "name")) }}{{ end -}}
{{- range $d := $deployments -}}
{{- if or $.Values.gpu.enabled (hasKey $m "numGpus") -}}
{{- $opts := get $d "ray_actor_options" | default dict -}}
{{- $_ := set $opts "num_gpus" (hasKey $m "numGpus" | ternary $m.numGpus $.Values.gpu.numGpusPerReplica) -}}
{{- $_ := set $d "ray_actor_options" $opts -}}
{{- end -}}
{{- if and (hasKey $d "num_replicas") (ne (toString (get $d "num_replicas")) "auto") -}}
{{- fail (printf "serve config: deployment %s has a fixed num_replicas; the chart sizes model deployments through their autoscaling_config" (get $d "name")) -}}
{{- end -}}
{{- $max := hasKey $m "maxReplicas" | ternary $m.maxReplicas $maxReplicas -}}
{{- $min := hasKey $m "minReplicas" | ternary $m.minReplicas $minReplicas -}}
{{- $auto := get $d "autoscaling_config" | default dict -}}
{{- $_ := set $auto "max_replicas" (int $max) -}}
{{- $_ := set $d "autoscaling_config" $auto -}}
{{- if not (kindIs "invalid" $min) -}}
{{- $_ := set $auto "min_replicas" (int $min) -}}
{{- if lt (int $max) (int $min) -}}
{{- if hasKey $m "maxReplicas" }}{{ fail (printf "models: %s: maxReplicas (%v) is below the chart's minimum of replicas (%v): set its minReplicas too" $m.name $max $min) }}{{ end -}}
{{- $_ := set $auto "max_replicas" (int $min) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $m "maxBatchSize" -}}
{{- $user := get $d "user_config" | default dict -}}
{{- $_ := set $user "max_batch_size" (int $m.maxBatchSize) -}}
{{- $_ := set $d "user_config" $user -}}
{{- end -}}
{{- end -}}
{{- $_ := set $app "deployments" $deployments -}}
{{- end -}}
{{- end -}}
{{- toYaml $config -}}
{{- end }}

{{/*
A PromQL expression scoped to the release's namespace: every selector of this project's
metrics (ray_*, marcelle_torch_*, probe_*) gets namespace="<ns>" (the Prometheus Operator labels
every PodMonitor target with its namespace). A second release elsewhere then neither satisfies
nor trips this release's alerts, absent() ones included. Other metrics (DCGM) stay as they are.
Call with (dict "expr" "..." "ns" .Release.Namespace).
*/}}
{{- define "mt.scopedPromQL" -}}
{{- $metric := "\\b((?:ray|marcelle_torch|probe)_[A-Za-z0-9_]*)" -}}
{{- $matcher := printf "namespace=%q" .ns -}}
{{- $expr := regexReplaceAll (printf "%s\\{" $metric) .expr (printf "${1}{%s," $matcher) -}}
{{- regexReplaceAll (printf "%s([^A-Za-z0-9_{]|$)" $metric) $expr (printf "${1}{%s}${2}" $matcher) -}}
{{- end }}
