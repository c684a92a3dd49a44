{{/*
One model entry with the runtime defaults filled in, as YAML (use with fromYaml). Keys are
filled with hasKey, not `default`, so an explicit 0 (gpusPerPod: 0, replicas: 0) is kept.
args: root, model
*/}}
{{- define "kiln.model" -}}
{{- $m := .model }}
{{- $r := .root.Values.runtime }}
name: {{ $m.name }}
fullname: {{ printf "%s-%s" (include "kiln.fullname" .root) $m.name | trunc 63 | trimSuffix "-" }}
engine: {{ $m.engine | quote }}
replicas: {{ hasKey $m "replicas" | ternary $m.replicas 1 | int }}
gpusPerPod: {{ hasKey $m "gpusPerPod" | ternary $m.gpusPerPod 0 | int }}
nodes: {{ hasKey $m "nodes" | ternary $m.nodes 1 | int }}
tp: {{ hasKey $m "tp" | ternary $m.tp 1 | int }}
pp: {{ hasKey $m "pp" | ternary $m.pp 1 | int }}
dtype: {{ $m.dtype | default "" | quote }}
kvCache: {{ $m.kvCache | default dict | toJson }}
scheduler: {{ $m.scheduler | default dict | toJson }}
maxNewTokens: {{ $m.maxNewTokens | default 0 | int }}
resources: {{ $m.resources | default $r.resources | toJson }}
nodeSelector: {{ $m.nodeSelector | default $r.nodeSelector | toJson }}
tolerations: {{ $m.tolerations | default $r.tolerations | toJson }}
affinity: {{ $m.affinity | default $r.affinity | toJson }}
autoscaling: {{ merge (deepCopy ($m.autoscaling | default dict)) $r.autoscaling | toJson }}
podDisruptionBudget: {{ merge (deepCopy ($m.podDisruptionBudget | default dict)) $r.podDisruptionBudget | toJson }}
{{- end }}

{{/* Labels selecting one model's pods. args: root, m (from kiln.model) */}}
{{- define "kiln.modelSelectorLabels" -}}
{{ include "kiln.selectorLabels" .root }}
app.kubernetes.io/component: runtime
kiln.dev/model: {{ .m.name }}
{{- end }}

{{/*
`python -m runtime_service serve ...` for one model (docs/ARCHITECTURE.md, contracts), one argument per line.
args: root, m
*/}}
{{- define "kiln.runtimeServeArgs" -}}
{{- $r := .root.Values.runtime }}
{{- $m := .m }}
- python
- -m
- runtime_service
- serve
- --engine
- {{ $m.engine | quote }}
- --listen
- {{ printf "0.0.0.0:%d" (int $r.port) | quote }}
- --cache-dir
- /var/cache/kiln/engines
- --device
- {{ ternary "cuda" "cpu" (gt (int $m.gpusPerPod) 0) }}
{{- if $m.dtype }}
- --dtype
- {{ $m.dtype }}
{{- end }}
{{- with $m.kvCache }}
{{- if hasKey . "maxTokens" }}
- --kv-max-tokens
- {{ int .maxTokens | quote }}
{{- end }}
{{- if hasKey . "freeGpuMemoryFraction" }}
- --kv-free-gpu-memory-fraction
- {{ .freeGpuMemoryFraction | toString | quote }}
{{- end }}
{{- if hasKey . "blockSize" }}
- --block-size
- {{ int .blockSize | quote }}
{{- end }}
{{- end }}
- --scheduler-policy
- {{ $m.scheduler.policy | default "GUARANTEED_NO_EVICT" }}
{{- with $m.scheduler }}
{{- if hasKey . "maxQueueSize" }}
- --max-queue-size
- {{ int .maxQueueSize | quote }}
{{- end }}
{{- if hasKey . "maxBatchSize" }}
- --max-batch-size
- {{ int .maxBatchSize | quote }}
{{- end }}
{{- end }}
{{- if $m.maxNewTokens }}
- --max-new-tokens
- {{ int $m.maxNewTokens | quote }}
{{- end }}
- --grace-s
- {{ int $r.drainSeconds | quote }}
- --step-stall-timeout-s
- {{ int $r.stepStallTimeoutSeconds | quote }}
- --engine-core
- {{ $r.engineCore | default "process" }}
- --served-model-name
- {{ $m.name }}
{{- with include "kiln.observabilityArgs" .root }}{{ . | trim | nindent 0 }}{{ end }}
{{- if $r.shareStartupCache }}
- --share-startup-cache
{{- end }}
{{- with include "kiln.transportArgs" .root }}{{ . | trim | nindent 0 }}{{ end }}
{{- end }}

{{/*
A LeaderWorkerSet pod's command: the serve command under kiln-launch, which runs it on launcher
rank 0 (the leader) and leaves the other ranks to the runtime. Every pod of a group runs the same
command; its rank and the rendezvous come from kiln.launchEnv. args: root, m
*/}}
{{- define "kiln.launchArgs" -}}
- kiln-launch
{{ include "kiln.runtimeServeArgs" . }}
{{- end }}

{{/*
Rank and rendezvous of a LeaderWorkerSet pod, in torchrun's names: RANK is the pod's index in
its group (0 on the leader), WORLD_SIZE the pods in a group, LOCAL_WORLD_SIZE the GPUs in a pod,
MASTER_ADDR the leader (the address LWS itself puts in LWS_LEADER_ADDRESS, spelled out because
$(VAR) in env only sees variables listed before it). The labels are set by the LWS controller.
args: root, m
*/}}
{{- define "kiln.launchEnv" -}}
- name: RANK
  valueFrom:
    fieldRef: {fieldPath: "metadata.labels['leaderworkerset.sigs.k8s.io/worker-index']"}
- name: KILN_LWS_GROUP_INDEX
  valueFrom:
    fieldRef: {fieldPath: "metadata.labels['leaderworkerset.sigs.k8s.io/group-index']"}
- name: WORLD_SIZE
  value: {{ int .m.nodes | quote }}
- name: LOCAL_WORLD_SIZE
  value: {{ int .m.gpusPerPod | quote }}
- name: MASTER_ADDR
  value: {{ printf "%s-$(KILN_LWS_GROUP_INDEX).%s.%s" .m.fullname .m.fullname .root.Release.Namespace | quote }}
- name: MASTER_PORT
  value: {{ int .root.Values.runtime.launchPort | quote }}
{{- end }}

{{/* The runtime container's probes, preStop and ports. args: root */}}
{{- define "kiln.runtimeProbes" -}}
{{- $r := .root.Values.runtime }}
{{- $p := $r.probes }}
startupProbe:
  {{- include "kiln.grpcProbe" (dict "root" .root "port" (int $r.port) "service" $p.readinessService) | trim | nindent 2 }}
  periodSeconds: 2
  timeoutSeconds: 5
  failureThreshold: {{ div (add (int $p.startupTimeoutSeconds) 1) 2 }}
readinessProbe:
  {{- include "kiln.grpcProbe" (dict "root" .root "port" (int $r.port) "service" $p.readinessService) | trim | nindent 2 }}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 2
livenessProbe:
  {{- include "kiln.grpcProbe" (dict "root" .root "port" (int $r.port) "service" $p.livenessService) | trim | nindent 2 }}
  periodSeconds: {{ int $p.livenessPeriodSeconds }}
  timeoutSeconds: 5
  failureThreshold: {{ int $p.livenessFailureThreshold }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", {{ int $r.preStopSleepSeconds | quote }}]
{{- end }}

{{- define "kiln.runtimeTerminationGrace" -}}
{{ add (int .Values.runtime.preStopSleepSeconds) (int .Values.runtime.drainSeconds) 15 }}
{{- end }}

{{/*
A runtime pod spec body (everything below `spec:`). args: root, m, role (server|worker), args
*/}}
{{- define "kiln.runtimePodSpec" -}}
{{- $root := .root }}
{{- $r := $root.Values.runtime }}
{{- $m := .m }}
{{- $gpus := int $m.gpusPerPod }}
serviceAccountName: {{ include "kiln.serviceAccountName" $root }}
automountServiceAccountToken: false
enableServiceLinks: false
terminationGracePeriodSeconds: {{ include "kiln.runtimeTerminationGrace" $root }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $m.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if or $m.tolerations (gt $gpus 0) }}
tolerations:
  {{- with $m.tolerations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- if gt $gpus 0 }}
  {{- include "kiln.gpuTolerations" $root | nindent 2 }}
  {{- end }}
{{- end }}
{{- with $m.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: runtime
    image: {{ include "kiln.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- .args | nindent 6 }}
    env:
      {{- include "kiln.commonEnv" $root | nindent 6 }}
      {{- include "kiln.s3Env" $root | nindent 6 }}
      - name: KILN_MODEL
        value: {{ $m.name | quote }}
      {{- if $r.kernelCacheHostPath }}
      - name: TRITON_CACHE_DIR
        value: /var/cache/kiln-kernels
      {{- end }}
      {{- if gt (int $m.nodes) 1 }}
      {{- include "kiln.launchEnv" (dict "root" $root "m" $m) | nindent 6 }}
      {{- end }}
    {{- if eq .role "server" }}
    ports:
      - {name: grpc, containerPort: {{ int $r.port }}, protocol: TCP}
      {{- if gt (int $m.nodes) 1 }}
      - {name: rendezvous, containerPort: {{ int $r.launchPort }}, protocol: TCP}
      {{- end }}
      {{- with include "kiln.metricsContainerPort" $root }}{{ . | trim | nindent 6 }}{{ end }}
    {{- include "kiln.runtimeProbes" (dict "root" $root) | nindent 4 }}
    {{- end }}
    securityContext:
      {{- toYaml $root.Values.containerSecurityContext | nindent 6 }}
    resources:
      {{- $res := deepCopy ($m.resources | default dict) }}
      {{- if gt $gpus 0 }}
      {{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" $gpus) ($res.limits | default dict)) }}
      {{- $_ := set $res "requests" (merge (dict "nvidia.com/gpu" $gpus) ($res.requests | default dict)) }}
      {{- end }}
      {{- toYaml $res | nindent 6 }}
    volumeMounts:
      - {name: tmp, mountPath: /tmp}
      - {name: engine-cache, mountPath: /var/cache/kiln}
      - {name: shm, mountPath: /dev/shm}
      {{- if $r.kernelCacheHostPath }}
      - {name: kernel-cache, mountPath: /var/cache/kiln-kernels}
      {{- end }}
      {{- with include "kiln.transportMounts" $root }}{{ . | trim | nindent 6 }}{{ end }}
volumes:
  - name: tmp
    emptyDir: {sizeLimit: 2Gi}
  - name: engine-cache
    emptyDir: {sizeLimit: {{ $r.cacheSizeLimit }}}
  - name: shm
    emptyDir: {medium: Memory, sizeLimit: {{ $r.shmSizeLimit }}}
  {{- if $r.kernelCacheHostPath }}
  - name: kernel-cache
    hostPath: {path: {{ $r.kernelCacheHostPath | quote }}, type: DirectoryOrCreate}
  {{- end }}
  {{- with include "kiln.transportVolumes" $root }}{{ . | trim | nindent 2 }}{{ end }}
{{- end }}
