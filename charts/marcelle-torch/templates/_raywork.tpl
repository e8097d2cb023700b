{{/* One RayService worker group; call with (dict "ctx" $ "name" "cpu" "group" <values> "image" ... "gpu" bool). */}}
{{- define "mt.rayWorkerGroup" -}}
{{- $ctx := .ctx -}}
{{- if gt (int .group.minReplicas) (int .group.maxReplicas) }}{{ fail (printf "%s worker group: minReplicas (%v) exceeds maxReplicas (%v)" .name .group.minReplicas .group.maxReplicas) }}{{ end -}}
{{- $resources := .group.resources -}}
{{- if .gpu }}{{ $resources = include "mt.gpuResources" (dict "resources" .group.resources "gpus" .group.gpusPerPod) | fromYaml }}{{ end -}}
- groupName: {{ .name }}
  replicas: {{ .group.replicas }}
  minReplicas: {{ .group.minReplicas }}
  maxReplicas: {{ .group.maxReplicas }}
  rayStartParams:
    metrics-export-port: "8080"
  template:
    metadata:
      labels:
        {{- include "mt.rayPodLabels" $ctx | nindent 8 }}
        marcelle-torch.dev/worker-group: {{ .name }}
    spec:
      {{- include "mt.podCommon" $ctx | nindent 6 }}
      securityContext:
        {{- .podSec | nindent 8 }}
      {{- with .group.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .group.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .group.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .group.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- range $c := . }}
        {{- if not (hasKey $c "labelSelector") }}
        {{- $c = merge (dict "labelSelector" (dict "matchLabels" (dict "app.kubernetes.io/instance" $ctx.Release.Name "ray.io/is-ray-node" "yes" "marcelle-torch.dev/worker-group" $.name))) $c }}
        {{- end }}
        {{- toYaml (list $c) | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- with include "mt.modelInitContainers" (dict "ctx" $ctx "image" .image) }}
      initContainers:
        {{- . | trim | nindent 8 }}
      {{- end }}
      containers:
        - name: ray-worker
          image: {{ .image }}
          imagePullPolicy: {{ $ctx.Values.imagePullPolicy }}
          ports:
            - {name: serve, containerPort: 8000}
            - {name: metrics, containerPort: 8080}
          {{- with include "mt.storeEnv" $ctx }}
          env:
            {{- . | trim | nindent 12 }}
          {{- end }}
          livenessProbe:
            httpGet: {path: /api/healthz, port: 52365}
            initialDelaySeconds: 30
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 120
          # Ready = the raylet is healthy and this node's Serve proxy answers (KubeRay's own check).
          readinessProbe:
            exec:
              command:
                - bash
                - -c
                - >-
                  wget --tries 1 -T 2 -q -O- http://localhost:52365/api/healthz | grep success &&
                  wget --tries 1 -T 10 -q -O- http://localhost:8000/-/healthz | grep success
            initialDelaySeconds: 10
            periodSeconds: 5
            timeoutSeconds: 12
            failureThreshold: 1
          resources:
            {{- toYaml $resources | nindent 12 }}
          securityContext:
            {{- .ctrSec | nindent 12 }}
          volumeMounts:
            - {name: ray-logs, mountPath: /tmp/ray}
            {{- with include "mt.modelMounts" $ctx }}
            {{- . | trim | nindent 12 }}
            {{- end }}
            {{- with include "mt.storeMounts" (dict "ctx" $ctx "readOnly" true) }}
            {{- . | trim | nindent 12 }}
            {{- end }}
      volumes:
        # KubeRay (common/pod.go addEmptyDir) adds no volume of its own at /tmp/ray when this one is there.
        - name: ray-logs
          emptyDir: {sizeLimit: {{ $ctx.Values.ray.logsSizeLimit }}}
        {{- with include "mt.modelVolumes" (dict "ctx" $ctx) }}
        {{- . | trim | nindent 8 }}
        {{- end }}
        {{- with include "mt.storeVolumes" (dict "ctx" $ctx "readOnly" true) }}
        {{- . | trim | nindent 8 }}
        {{- end }}
{{- end }}

{{/*
A container's resources with `nvidia.com/gpu` added to its limits (the device plugin's resource,
asked as a limit); call with (dict "resources" <map> "gpus" <count>); 0 GPUs: unchanged. The
Ray GPU worker group and the trainer.
*/}}
{{- define "mt.gpuResources" -}}
{{- $resources := deepCopy .resources -}}
{{- if gt (int .gpus) 0 -}}
{{- $limits := get $resources "limits" | default dict -}}
{{- $_ := set $limits "nvidia.com/gpu" .gpus -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end }}
