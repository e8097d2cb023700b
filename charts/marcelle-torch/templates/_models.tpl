{{/*
Models given as values (`models`): each is fetched and checked by an init container
(`marcelle-torch model fetch`, the Ray image) into the `models` emptyDir, which the other
containers mount read-only at /models; the Pod starts only once every model is there.
*/}}

{{/* The built-in models (src/marcelle_torch/models/registry.py; the worker's default --models). */}}
{{- define "mt.builtinModels" -}}
digits,digits-generator
{{- end }}

{{/* Where a model's folder is in every Pod that has the models. */}}
{{- define "mt.modelPath" -}}
/models/{{ . }}
{{- end }}

{{/* What values.schema.json cannot say: names unique, GPUs only with gpu.enabled, min <= max. */}}
{{- define "mt.checkModels" -}}
{{- $seen := dict -}}
{{- range $i, $m := .Values.models -}}
{{- if hasKey $seen $m.name }}{{ fail (printf "models[%d].name %q: another model has this name" $i $m.name) }}{{ end -}}
{{- $_ := set $seen $m.name true -}}
{{- if and (gt (float64 ($m.numGpus | default 0)) 0.0) (not $.Values.gpu.enabled) -}}
{{- fail (printf "models[%d] (%s): numGpus %v needs gpu.enabled (no Ray worker has a GPU otherwise)" $i $m.name $m.numGpus) -}}
{{- end -}}
{{- if and (hasKey $m "minReplicas") (hasKey $m "maxReplicas") (gt (int $m.minReplicas) (int $m.maxReplicas)) -}}
{{- fail (printf "models[%d] (%s): minReplicas (%v) exceeds maxReplicas (%v)" $i $m.name $m.minReplicas $m.maxReplicas) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
The init containers of a Pod that uses the models; call with (dict "ctx" $ "image" <image>
"onnx" bool). `onnx`: the web app Pod, where each model's ONNX bundle is also exported into
the `onnx-models` emptyDir that nginx serves at /onnx/<name>/. `names` (a list, optional): only
those of the models (the trainer's). They run as the Ray image's
user (1000:100; the Pod's fsGroup makes the emptyDirs writable to it), with a read-only root
and /tmp (download cache, temporary files) on the `models-tmp` emptyDir. A failure's last line
of log is the container's termination message (what `kubectl describe pod` shows).
*/}}
{{- define "mt.modelInitContainers" -}}
{{- $ctx := .ctx -}}
{{- range $i, $m := $ctx.Values.models }}
{{- if or (not (hasKey $ "names")) (has $m.name $.names) }}
{{- $ref := printf "%s#sha256=%s" ($m.uri | default "") ($m.sha256 | default "") }}
{{- if $m.pvc }}{{ $ref = printf "/model-sources/%d/%s" $i ($m.pvc.subPath | default "") | trimSuffix "/" }}{{ end }}
- name: {{ printf "fetch-%d-%s" $i $m.name | trunc 63 | trimSuffix "-" }}
  command: [marcelle-torch, model, fetch, {{ $ref | quote }}, --out, {{ include "mt.modelPath" $m.name | quote }}, --name, {{ $m.name | quote }}]
  {{- include "mt.modelInitCommon" (dict "ctx" $ctx "image" $.image) | nindent 2 }}
  volumeMounts:
    - {name: models, mountPath: /models}
    - {name: models-tmp, mountPath: /tmp}
    {{- if $m.pvc }}
    - {name: {{ printf "model-source-%d" $i }}, mountPath: {{ printf "/model-sources/%d" $i }}, readOnly: true}
    {{- end }}
{{- end }}
{{- end }}
{{- if .onnx }}
{{- range $i, $m := $ctx.Values.models }}
- name: {{ printf "onnx-%d-%s" $i $m.name | trunc 63 | trimSuffix "-" }}
  command: [marcelle-torch, export-onnx, {{ include "mt.modelPath" $m.name | quote }}, --out, {{ printf "/onnx-models/%s" $m.name | quote }}]
  {{- include "mt.modelInitCommon" (dict "ctx" $ctx "image" $.image) | nindent 2 }}
  volumeMounts:
    - {name: models, mountPath: /models, readOnly: true}
    - {name: onnx-models, mountPath: /onnx-models}
    - {name: models-tmp, mountPath: /tmp}
{{- end }}
{{- end }}
{{- end }}

{{- define "mt.modelInitCommon" -}}
image: {{ .image }}
imagePullPolicy: {{ .ctx.Values.imagePullPolicy }}
env:
  - {name: HOME, value: /tmp}
  - {name: MARCELLE_TORCH_CACHE, value: /tmp/marcelle-torch}
resources:
  {{- toYaml .ctx.Values.modelInit.resources | nindent 2 }}
securityContext:
  runAsUser: 1000
  runAsGroup: 100
  {{- include "mt.containerSecurityContext" (dict "readOnly" true) | nindent 2 }}
terminationMessagePolicy: FallbackToLogsOnError
{{- end }}

{{/* The volumes of a Pod that uses the models; call with (dict "ctx" $ "onnx" bool), and
"names" (a list) where the Pod takes only those of the models (the trainer). */}}
{{- define "mt.modelVolumes" -}}
{{- if .ctx.Values.models }}
- name: models
  emptyDir: {sizeLimit: {{ .ctx.Values.modelInit.sizeLimit }}}
- name: models-tmp
  emptyDir: {sizeLimit: {{ .ctx.Values.modelInit.sizeLimit }}}
{{- if .onnx }}
- name: onnx-models
  emptyDir: {sizeLimit: {{ .ctx.Values.modelInit.sizeLimit }}}
{{- end }}
{{- range $i, $m := .ctx.Values.models }}
{{- if and $m.pvc (or (not (hasKey $ "names")) (has $m.name $.names)) }}
- name: {{ printf "model-source-%d" $i }}
  persistentVolumeClaim: {claimName: {{ $m.pvc.claimName | quote }}, readOnly: true}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The main containers' mount of the fetched models (read-only). */}}
{{- define "mt.modelMounts" -}}
{{- if .Values.models }}
- {name: models, mountPath: /models, readOnly: true}
{{- end }}
{{- end }}

{{/*
The model store (modelStore; training turns it on): one PersistentVolumeClaim, mounted at one
path with MARCELLE_TORCH_STORE naming it (src/marcelle_torch/models/store.py), read-write where
runs write versions or publish them (the trainer, the run worker, both uid 10001 and fsGroup
10001), read-only where `published` is only followed (Ray Pods, the web app's nginx). A reader's
volume is read-only too, so the kubelet never changes the claim's group to the reader's fsGroup
(it skips read-only volumes), which would take the writers' group access away.
*/}}
{{- define "mt.storeEnabled" -}}
{{- if or .Values.training.enabled .Values.modelStore.enabled }}true{{ end -}}
{{- end }}

{{- define "mt.storePath" -}}
/var/lib/marcelle-torch/store
{{- end }}

{{- define "mt.storeClaimName" -}}
{{- .Values.modelStore.existingClaim | default (printf "%s-model-store" (include "mt.fullname" .)) }}
{{- end }}

{{/* call with (dict "ctx" $ "readOnly" bool) */}}
{{- define "mt.storeVolumes" -}}
{{- if include "mt.storeEnabled" .ctx }}
- name: store
  persistentVolumeClaim: {claimName: {{ include "mt.storeClaimName" .ctx }}, readOnly: {{ .readOnly }}}
{{- end }}
{{- end }}

{{/* call with (dict "ctx" $ "readOnly" bool) */}}
{{- define "mt.storeMounts" -}}
{{- if include "mt.storeEnabled" .ctx }}
- {name: store, mountPath: {{ include "mt.storePath" .ctx }}, readOnly: {{ .readOnly }}}
{{- end }}
{{- end }}

{{- define "mt.storeEnv" -}}
{{- if include "mt.storeEnabled" . }}
- {name: MARCELLE_TORCH_STORE, value: {{ include "mt.storePath" . | quote }}}
{{- end }}
{{- end }}

{{/* The built-in models that can be fine-tuned (a registry spec with `trainable`). */}}
{{- define "mt.trainableBuiltins" -}}
digits
{{- end }}

{{/* The names of the models the trainer takes (a JSON list): training.models, or the trainable
built-ins and every one of models. */}}
{{- define "mt.trainingModels" -}}
{{- $models := list -}}
{{- range .Values.models }}{{ $models = append $models .name }}{{ end -}}
{{- $builtins := splitList "," (include "mt.trainableBuiltins" .) -}}
{{- $names := .Values.training.models | default (concat $builtins $models) -}}
{{- range $names -}}
{{- if not (or (has . $builtins) (has . $models)) -}}
{{- fail (printf "training.models: %q is neither a trainable built-in (%s) nor one of `models` (%s)" . (join ", " $builtins) (join ", " $models | default "none")) -}}
{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end }}
