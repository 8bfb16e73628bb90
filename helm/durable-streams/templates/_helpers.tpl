{{/*
Names, labels and the values derived from several keys. Templates read these
helpers instead of repeating the logic.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "durable-streams.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified app name: fullnameOverride, else the release name when it
already contains the chart name, else "<release>-<chart>". Truncated to 63
characters because some Kubernetes name fields are limited to that.
*/}}
{{- define "durable-streams.fullname" -}}
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

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "durable-streams.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "durable-streams.labels" -}}
helm.sh/chart: {{ include "durable-streams.chart" . }}
{{ include "durable-streams.selectorLabels" . }}
app.kubernetes.io/version: {{ include "durable-streams.imageTag" . | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: durable-streams
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the pods; never change them on upgrade. */}}
{{- define "durable-streams.selectorLabels" -}}
app.kubernetes.io/name: {{ include "durable-streams.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "durable-streams.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "durable-streams.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image tag: image.tag, else the chart's appVersion. */}}
{{- define "durable-streams.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The image reference; a digest wins over the tag. */}}
{{- define "durable-streams.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "durable-streams.imageTag" .) }}
{{- end }}
{{- end }}

{{/* The headless Service that gives each pod a stable DNS name. */}}
{{- define "durable-streams.headlessName" -}}
{{- printf "%s-headless" (include "durable-streams.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "true" when storage.mode keeps data on disk (StatefulSet), else "". */}}
{{- define "durable-streams.durable" -}}
{{- if ne .Values.storage.mode "memory" }}true{{ end }}
{{- end }}

{{/* "true" when the API port speaks TLS (tls or mtls), else "". */}}
{{- define "durable-streams.tlsEnabled" -}}
{{- if ne .Values.tls.mode "http" }}true{{ end }}
{{- end }}

{{/* The Secret holding tls.crt and tls.key (and ca.crt). */}}
{{- define "durable-streams.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "durable-streams.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{/* Where the server's certificate Secret is mounted, as a directory. */}}
{{- define "durable-streams.tlsDir" -}}/etc/durable-streams/tls{{- end }}

{{/* Where a separate client CA Secret is mounted, as a directory. */}}
{{- define "durable-streams.clientCaDir" -}}/etc/durable-streams/client-ca{{- end }}

{{/* Where the rendered server configuration is mounted. */}}
{{- define "durable-streams.webhookKeyDir" -}}/etc/durable-streams/webhook{{- end }}

{{/* Where the server configuration is mounted. */}}
{{- define "durable-streams.configDir" -}}/etc/durable-streams/server{{- end }}

{{/* The data directory (storage.data_dir), a volume mount. */}}
{{- define "durable-streams.dataDir" -}}/var/lib/durable-streams{{- end }}

{{/* The name of the volumeClaimTemplate; PVCs are "<this>-<pod>". */}}
{{- define "durable-streams.dataVolumeName" -}}durable-streams-data{{- end }}

{{/* The port the probes and Prometheus use: "metrics" or "api". */}}
{{- define "durable-streams.probePort" -}}
{{- if .Values.metrics.separatePort }}metrics{{ else }}api{{ end }}
{{- end }}

{{/* The probe scheme: the separate metrics port is always plain HTTP. */}}
{{- define "durable-streams.probeScheme" -}}
{{- if or .Values.metrics.separatePort (not (include "durable-streams.tlsEnabled" .)) }}HTTP{{ else }}HTTPS{{ end }}
{{- end }}

{{/*
Refusals for combinations that cannot work. Called from the workload
templates so `helm template` and `helm install` stop with a clear message.
*/}}
{{- define "durable-streams.validate" -}}
{{- $config := .Values.config | default dict }}
{{- $server := get $config "server" | default dict }}
{{- $drain := get $server "drain_timeout_secs" | default 25 | int }}
{{- if le (int .Values.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than config.server.drain_timeout_secs (%d): the kubelet kills the container before the drain ends" (int .Values.terminationGracePeriodSeconds) $drain) }}
{{- end }}
{{- if and (eq .Values.tls.mode "mtls") (not .Values.metrics.separatePort) }}
{{- fail "tls.mode=mtls needs metrics.separatePort=true: kubelet probes and Prometheus present no client certificate, so they need the plain-HTTP metrics/probe port" }}
{{- end }}
{{- if and (eq .Values.storage.mode "memory") (gt (int .Values.replicaCount) 1) (not .Values.allowMultipleReplicas) }}
{{- fail "replicaCount > 1: every pod holds its own streams, so a Service spreading requests over pods breaks the protocol; route each stream to one pod (see the chart README) and set allowMultipleReplicas=true" }}
{{- end }}
{{- if and (include "durable-streams.durable" .) (gt (int .Values.replicaCount) 1) (not .Values.allowMultipleReplicas) }}
{{- fail "replicaCount > 1: every pod holds its own streams on its own volume, so a Service spreading requests over pods breaks the protocol; route each stream to one pod (see the chart README) and set allowMultipleReplicas=true" }}
{{- end }}
{{- if and (eq .Values.profile "prod-tls") (ne .Values.tls.mode "tls") }}
{{- fail "profile=prod-tls expects tls.mode=tls (the profile turns on HTTP/2, which needs TLS); use values-prod-tls.yaml or another profile" }}
{{- end }}
{{- if and (eq .Values.profile "prod-mtls") (ne .Values.tls.mode "mtls") }}
{{- fail "profile=prod-mtls expects tls.mode=mtls; use values-prod-mtls.yaml or another profile" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not (include "durable-streams.tlsEnabled" .)) }}
{{- fail "tls.certManager.enabled=true needs tls.mode=tls or tls.mode=mtls" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled=true needs tls.certManager.issuerRef.name: the Issuer or ClusterIssuer that signs the server certificate" }}
{{- end }}
{{- end }}

{{/*
The server configuration as a dict: the operator's `config` with the keys
the chart owns (listeners, storage, TLS paths, metrics) set from the
structured values, so the pod spec and the server always agree.
*/}}
{{- define "durable-streams.serverConfig" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $owned := dict
  "server" (dict "bind_address" (printf "%s:%d" .Values.listenHost (int .Values.ports.api)))
  "storage" (dict "mode" .Values.storage.mode)
  "transport" (dict "mode" .Values.tls.mode)
  "observability" (dict "metrics" (dict "enabled" .Values.metrics.enabled "path" .Values.metrics.path))
}}
{{- if include "durable-streams.durable" . }}
{{- $_ := set $owned.storage "data_dir" (include "durable-streams.dataDir" .) }}
{{- end }}
{{- if .Values.metrics.separatePort }}
{{- $_ := set $owned.observability.metrics "bind_address" (printf "%s:%d" .Values.listenHost (int .Values.ports.metrics)) }}
{{- end }}
{{- if include "durable-streams.tlsEnabled" . }}
{{- $tlsDir := include "durable-streams.tlsDir" . }}
{{- $tls := dict "cert_path" (printf "%s/tls.crt" $tlsDir) "key_path" (printf "%s/tls.key" $tlsDir) }}
{{- if eq .Values.tls.mode "mtls" }}
{{- if .Values.tls.clientCA.secretName }}
{{- $_ := set $tls "client_ca_path" (printf "%s/%s" (include "durable-streams.clientCaDir" .) .Values.tls.clientCA.key) }}
{{- else }}
{{- $_ := set $tls "client_ca_path" (printf "%s/%s" $tlsDir .Values.tls.clientCA.key) }}
{{- end }}
{{- end }}
{{- $_ := set $owned.transport "tls" $tls }}
{{- end }}
{{- if .Values.subscriptions.enabled }}
{{- $subscriptions := dict "enabled" true }}
{{- if .Values.subscriptions.signingKeySecret }}
{{- $_ := set $subscriptions "signing_key_path" (printf "%s/%s" (include "durable-streams.webhookKeyDir" .) .Values.subscriptions.signingKeyKey) }}
{{- end }}
{{- $_ := set $owned "subscriptions" $subscriptions }}
{{- end }}
{{- toYaml (mergeOverwrite $config $owned) }}
{{- end }}

{{/*
Renders a dict as TOML: scalar keys first, then one [table] per nested dict.
Helm reads numbers as floats, so whole numbers are written as integers
(toJson does that); keys the server reads as floats keep a decimal point.
Strings and lists of strings are JSON, which is valid TOML for them.
Argument: (dict "prefix" "section.sub" "table" $dict)
*/}}
{{- define "durable-streams.toml" -}}
{{- $prefix := .prefix }}
{{- $floatKeys := list "sampling_ratio" }}
{{- range $key, $value := .table }}
{{- if not (kindIs "map" $value) }}
{{- if and (has $key $floatKeys) (kindIs "float64" $value) (eq (floor $value) $value) }}
{{ $key }} = {{ $value | int }}.0
{{- else if kindIs "invalid" $value }}
{{- fail (printf "config.%s%s is null: remove the key or give it a value" (ternary "" (printf "%s." $prefix) (eq $prefix "")) $key) }}
{{- else }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- end }}
{{- range $key, $value := .table }}
{{- if kindIs "map" $value }}
{{- $name := ternary $key (printf "%s.%s" $prefix $key) (eq $prefix "") }}
{{- $scalars := list }}
{{- range $k, $v := $value }}{{ if not (kindIs "map" $v) }}{{ $scalars = append $scalars $k }}{{ end }}{{ end }}
{{- if $scalars }}

[{{ $name }}]
{{- end }}
{{- include "durable-streams.toml" (dict "prefix" $name "table" $value) }}
{{- end }}
{{- end }}
{{- end }}
