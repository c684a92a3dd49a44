{{/*
Observability flags every Kiln server shares (runtime and builder): Prometheus /metrics on the
`metrics` port, the log format, and OTLP traces when an endpoint is set. args: root
*/}}
{{- define "kiln.observabilityArgs" -}}
{{- $v := .Values }}
{{- if $v.metrics.enabled }}
- --metrics-listen
- {{ printf "0.0.0.0:%d" (int $v.metrics.port) | quote }}
{{- end }}
- --log-format
- {{ $v.logFormat }}
{{- if $v.tracing.otlpEndpoint }}
- --otlp-endpoint
- {{ $v.tracing.otlpEndpoint | quote }}
{{- end }}
{{- end }}

{{/* The metrics container port, when metrics are on. args: root */}}
{{- define "kiln.metricsContainerPort" -}}
{{- if .Values.metrics.enabled }}
- {name: metrics, containerPort: {{ int .Values.metrics.port }}, protocol: TCP}
{{- end }}
{{- end }}

{{/* The metrics Service port, when metrics are on. args: root */}}
{{- define "kiln.metricsServicePort" -}}
{{- if .Values.metrics.enabled }}
- {name: metrics, port: {{ int .Values.metrics.port }}, targetPort: metrics, protocol: TCP}
{{- end }}
{{- end }}

{{/*
Pod annotations for a Prometheus that discovers pods by annotation: the alternative to the
ServiceMonitor, rendered only when metrics are on and the ServiceMonitor is off. args: root
*/}}
{{- define "kiln.metricsPodAnnotations" -}}
{{- $m := .Values.metrics }}
{{- if and $m.enabled $m.podAnnotations (not $m.serviceMonitor.enabled) }}
annotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ int $m.port | quote }}
  prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/*
The PromQL selector of one model's series: its served model name (--served-model-name) in this
release's namespace. args: root, m
*/}}
{{- define "kiln.modelSeries" -}}
{{- printf "model=%q,namespace=%q" .m.name .root.Release.Namespace }}
{{- end }}
