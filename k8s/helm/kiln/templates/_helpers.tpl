{{/* Names and labels. */}}
{{- define "kiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kiln.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kiln.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "kiln.selectorLabels" . }}
{{- end }}

{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kiln.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kiln.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The store: the S3 endpoint and the Secret holding its keys. */}}
{{- define "kiln.s3Endpoint" -}}
{{- if .Values.store.s3.endpoint }}
{{- .Values.store.s3.endpoint }}
{{- else }}
{{- printf "%s-minio:9000" (include "kiln.fullname" .) }}
{{- end }}
{{- end }}

{{- define "kiln.s3SecretName" -}}
{{- default (printf "%s-s3" (include "kiln.fullname" .)) .Values.store.s3.existingSecret }}
{{- end }}

{{- define "kiln.s3Bucket" -}}
{{- (urlParse .Values.store.uri).host }}
{{- end }}

{{- define "kiln.s3Env" -}}
- name: KILN_S3_ENDPOINT
  value: {{ include "kiln.s3Endpoint" . | quote }}
- name: KILN_S3_SECURE
  value: {{ ternary "1" "0" (and .Values.store.s3.secure (not (empty .Values.store.s3.endpoint))) | quote }}
- name: KILN_S3_REGION
  value: {{ .Values.store.s3.region | quote }}
- name: KILN_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "kiln.s3SecretName" . }}, key: accessKey}
- name: KILN_S3_SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "kiln.s3SecretName" . }}, key: secretKey}
{{- if .Values.store.s3.caSecret }}
- name: KILN_S3_CA_FILE
  value: /etc/kiln/s3-ca/ca.crt
{{- end }}
{{- end }}

{{/* Environment every Kiln container shares: writable HOME, no bytecode writes. */}}
{{- define "kiln.commonEnv" -}}
- name: HOME
  value: /tmp
- name: KILN_HOME
  value: /tmp/kiln
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- end }}

{{/* TLS and token flags of `serve`, and the volumes they read. */}}
{{- define "kiln.transportArgs" -}}
{{- if .Values.tls.enabled }}
- --tls-cert
- /etc/kiln/tls/tls.crt
- --tls-key
- /etc/kiln/tls/tls.key
{{- end }}
{{- if .Values.auth.tokenSecret }}
- --token-file
- /etc/kiln/token/token
{{- end }}
{{- end }}

{{- define "kiln.transportMounts" -}}
{{- if .Values.tls.enabled }}
- {name: tls, mountPath: /etc/kiln/tls, readOnly: true}
{{- end }}
{{- if .Values.auth.tokenSecret }}
- {name: token, mountPath: /etc/kiln/token, readOnly: true}
{{- end }}
{{- if .Values.store.s3.caSecret }}
- {name: s3-ca, mountPath: /etc/kiln/s3-ca, readOnly: true}
{{- end }}
{{- end }}

{{- define "kiln.transportVolumes" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret: {secretName: {{ .Values.tls.secretName }}, defaultMode: 0440}
{{- end }}
{{- if .Values.auth.tokenSecret }}
- name: token
  secret:
    secretName: {{ .Values.auth.tokenSecret }}
    defaultMode: 0440
    items: [{key: {{ .Values.auth.tokenKey }}, path: token}]
{{- end }}
{{- if .Values.store.s3.caSecret }}
- name: s3-ca
  secret:
    secretName: {{ .Values.store.s3.caSecret }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- end }}

{{/*
A gRPC health probe's handler. The kubelet's grpc probe speaks plaintext only, so TLS pods run
grpcurl (shipped in the image by requirements.txt) against localhost instead; health calls need
no token, but the reflection grpcurl uses does.
args: root, port, service
*/}}
{{- define "kiln.grpcProbe" -}}
{{- $v := .root.Values }}
{{- if $v.tls.enabled }}
exec:
  command:
    - sh
    - -c
    - >-
      grpcurl -insecure -max-time 4
      {{- if $v.auth.tokenSecret }} -H "authorization: Bearer $(cat /etc/kiln/token/token)"{{ end }}
      -d '{"service":"{{ .service }}"}' localhost:{{ .port }} grpc.health.v1.Health/Check
      | grep -q '"SERVING"'
{{- else }}
grpc:
  port: {{ .port }}
  service: {{ .service | quote }}
{{- end }}
{{- end }}

{{/* GPU toleration added to every pod that asks for GPUs. */}}
{{- define "kiln.gpuTolerations" -}}
- {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
{{- end }}
