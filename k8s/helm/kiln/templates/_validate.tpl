{{/*
Cross-field rules values.schema.json cannot express (JSON Schema has no arithmetic and no
uniqueness by key); each failure names the model and the field. runtime-deployment.yaml runs it.
*/}}
{{- define "kiln.validate" -}}
{{- $v := .Values }}
{{- if and (not $v.store.s3.endpoint) (not $v.minio.enabled) }}
{{- fail "store.s3.endpoint is empty and minio.enabled is false: set an external S3 endpoint or enable the chart's MinIO" }}
{{- end }}
{{- $p := $v.runtime.probes }}
{{- if (le (mul (int $p.livenessPeriodSeconds) (int $p.livenessFailureThreshold)) (int $v.runtime.drainSeconds)) }}
{{- fail (printf "runtime.probes: livenessPeriodSeconds * livenessFailureThreshold (%d s) must exceed runtime.drainSeconds (%d s), so that a draining pod is never restarted (health \"\" and kiln.v1.Runtime report NOT_SERVING while it drains)" (mul (int $p.livenessPeriodSeconds) (int $p.livenessFailureThreshold)) (int $v.runtime.drainSeconds)) }}
{{- end }}
{{- $names := dict }}
{{- range $v.models }}
{{- $m := include "kiln.model" (dict "root" $ "model" .) | fromYaml }}
{{- if hasKey $names $m.name }}
{{- fail (printf "models: the name %q is used twice" $m.name) }}
{{- end }}
{{- $_ := set $names $m.name true }}
{{- $world := mul (max (int $m.gpusPerPod) 1) (int $m.nodes) }}
{{- if ne (mul (int $m.tp) (int $m.pp)) $world }}
{{- fail (printf "models[%s]: tp * pp = %d must equal max(gpusPerPod, 1) * nodes = %d (one rank per GPU)" $m.name (mul (int $m.tp) (int $m.pp)) $world) }}
{{- end }}
{{- if and $m.autoscaling.enabled (eq $m.autoscaling.mode "keda") (not $v.metrics.enabled) }}
{{- fail (printf "models[%s].autoscaling.mode keda scales on the pods' Prometheus metrics: it needs metrics.enabled" $m.name) }}
{{- end }}
{{- if and $m.autoscaling.enabled (gt (int $m.autoscaling.minReplicas) (int $m.autoscaling.maxReplicas)) }}
{{- fail (printf "models[%s].autoscaling: minReplicas %d exceeds maxReplicas %d" $m.name (int $m.autoscaling.minReplicas) (int $m.autoscaling.maxReplicas)) }}
{{- end }}
{{- end }}
{{- $builds := dict }}
{{- range $v.builds }}
{{- if hasKey $builds .name }}
{{- fail (printf "builds: the name %q is used twice" .name) }}
{{- end }}
{{- $_ := set $builds .name true }}
{{- if and .viaBuilder (not $v.builder.enabled) }}
{{- fail (printf "builds[%s].viaBuilder needs builder.enabled" .name) }}
{{- end }}
{{- end }}
{{- end }}
