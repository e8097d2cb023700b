{{/*
The `marcelle-torch worker` container, one place for the run worker (worker-deployment.yaml) and
the training worker (trainer-deployment.yaml): the backend it connects to, its name, metrics and
probes, its backend account (from the credentials Secret, only with authentication on), the
models it takes and, with the model store, `--store` at the store's mount. Call with
(dict "ctx" $ "name" "worker" "image" <image> "models" <list of --models items, none = the
worker's default> "runs" <"train" | "infer" | "", the worker's --runs; "": all> "extraArgs" <list>
"resources" <map> "command" bool). `command`: the image's entrypoint is not `marcelle-torch` (the
GPU Ray image), so the container names it.
*/}}
{{- define "mt.workerContainer" -}}
{{- $ctx := .ctx -}}
- name: {{ .name }}
  image: {{ .image }}
  imagePullPolicy: {{ $ctx.Values.imagePullPolicy }}
  {{- if .command }}
  command: [marcelle-torch]
  {{- end }}
  args:
    - worker
    - --backend
    - {{ printf "http://%s:%v" (include "mt.backendHost" $ctx) $ctx.Values.backend.port | quote }}
    - --name
    - $(POD_NAME)
    - --metrics-port
    - {{ $ctx.Values.worker.metricsPort | quote }}
    {{- with .models }}
    - --models
    - {{ . | join "," | quote }}
    {{- end }}
    {{- if include "mt.storeEnabled" $ctx }}
    - --store
    - {{ include "mt.storePath" $ctx | quote }}
    {{- end }}
    {{- with .runs }}
    - --runs
    - {{ . | quote }}
    {{- end }}
    {{- range .extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef: {fieldPath: metadata.name}
    - {name: HOME, value: /tmp}
    {{- if $ctx.Values.backend.auth.enabled }}
    - name: MARCELLE_WORKER_EMAIL
      valueFrom:
        secretKeyRef: {name: {{ include "mt.credentialsSecretName" $ctx }}, key: worker-email}
    - name: MARCELLE_WORKER_PASSWORD
      valueFrom:
        secretKeyRef: {name: {{ include "mt.credentialsSecretName" $ctx }}, key: worker-password}
    {{- end }}
    {{- with include "mt.storeEnv" $ctx }}
    {{- . | trim | nindent 4 }}
    {{- end }}
  ports:
    - {name: metrics, containerPort: {{ $ctx.Values.worker.metricsPort }}}
  # The worker exposes no API, only metrics; `marcelle_torch_worker_up` tells whether it is connected.
  startupProbe:
    httpGet: {path: /metrics, port: metrics}
    periodSeconds: 2
    failureThreshold: 90
  livenessProbe:
    httpGet: {path: /metrics, port: metrics}
    periodSeconds: 15
    timeoutSeconds: 5
    failureThreshold: 4
  readinessProbe:
    httpGet: {path: /metrics, port: metrics}
    periodSeconds: 10
    timeoutSeconds: 5
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- include "mt.containerSecurityContext" (dict "readOnly" true) | nindent 4 }}
  volumeMounts:
    - {name: tmp, mountPath: /tmp}
    {{- with include "mt.modelMounts" $ctx }}
    {{- . | trim | nindent 4 }}
    {{- end }}
    {{- with include "mt.storeMounts" (dict "ctx" $ctx "readOnly" false) }}
    {{- . | trim | nindent 4 }}
    {{- end }}
{{- end }}
