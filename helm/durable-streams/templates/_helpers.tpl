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

{{/* "true" when storage.mode keeps data on the pod's disk (StatefulSet), else "". */}}
{{- define "durable-streams.durable" -}}
{{- if has .Values.storage.mode (list "file-fast" "file-durable" "acid") }}true{{ end }}
{{- end }}

{{/*
The workload kind for storage.mode, chosen here only: a StatefulSet with a
volume per pod for the modes that keep data on the pod's disk, a
Deployment for memory and for postgres (stateless, interchangeable pods).
*/}}
{{- define "durable-streams.workloadKind" -}}
{{- if include "durable-streams.durable" . }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/* "true" when every pod serves every stream (storage.mode=postgres), else "". */}}
{{- define "durable-streams.shared" -}}
{{- if eq .Values.storage.mode "postgres" }}true{{ end }}
{{- end }}

{{/* The number of server pods: replicaCount, else 3 with postgres and 1 otherwise. */}}
{{- define "durable-streams.replicas" -}}
{{- if kindIs "invalid" .Values.replicaCount }}{{ ternary 3 1 (eq .Values.storage.mode "postgres") }}{{ else }}{{ .Values.replicaCount | int }}{{ end }}
{{- end }}

{{/* The CloudNativePG Cluster's name: cnpg.name, else "<fullname>-db". */}}
{{- define "durable-streams.cnpgName" -}}
{{- default (printf "%s-db" (include "durable-streams.fullname" . | trunc 47 | trimSuffix "-")) .Values.cnpg.name }}
{{- end }}

{{/* "true" when the CloudNativePG Cluster is rendered (its API served or forced). */}}
{{- define "durable-streams.cnpgRendered" -}}
{{- if and .Values.cnpg.enabled (include "durable-streams.apiServed" (dict "ctx" . "api" "postgresql.cnpg.io/v1/Cluster" "force" .Values.cnpg.force)) }}true{{ end }}
{{- end }}

{{/* Where the CA that signed the database's certificate is mounted, as a directory. */}}
{{- define "durable-streams.postgresCaDir" -}}/etc/durable-streams/postgres-ca{{- end }}

{{/*
The Secret and key holding the PostgreSQL URL: the one CloudNativePG writes
for its application user ("<cluster>-app", key uri) with cnpg.enabled,
else postgres.existingSecret (default "<fullname>-postgres").
*/}}
{{- define "durable-streams.postgresSecretName" -}}
{{- if .Values.cnpg.enabled }}{{ printf "%s-app" (include "durable-streams.cnpgName" .) }}{{ else }}{{ default (printf "%s-postgres" (include "durable-streams.fullname" .)) .Values.postgres.existingSecret }}{{ end }}
{{- end }}
{{- define "durable-streams.postgresSecretKey" -}}
{{- if .Values.cnpg.enabled }}uri{{ else }}{{ .Values.postgres.existingSecretKey }}{{ end }}
{{- end }}

{{/* The Secret with the database's CA certificate ("" when none is mounted). */}}
{{- define "durable-streams.postgresCaSecretName" -}}
{{- if .Values.cnpg.enabled }}{{ printf "%s-ca" (include "durable-streams.cnpgName" .) }}{{ else }}{{ .Values.postgres.caSecret }}{{ end }}
{{- end }}

{{/* The caching tier's name: "<fullname>-cache". */}}
{{- define "durable-streams.cacheName" -}}
{{- printf "%s-cache" (include "durable-streams.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/*
The caching tier's nginx.conf: files/nginx/durable-streams-cache.conf (a
copy of deploy/nginx/durable-streams-cache.conf) with each line marked
"chart:" set from the values; every other line stays as it is.
*/}}
{{- define "durable-streams.cacheConf" -}}
{{- $conf := .Files.Get "files/nginx/durable-streams-cache.conf" }}
{{- $connection := list "transport" "connection" }}
{{- $longPoll := include "durable-streams.configValue" (dict "ctx" . "path" $connection "key" "long_poll_timeout_secs" "default" 30) | int }}
{{- $timeout := include "durable-streams.proxyTimeoutSecs" . }}
{{- $auth := (.Values.config | default dict).auth | default dict }}
{{- $identity := include "durable-streams.configValue" (dict "ctx" . "path" (list "proxy" "identity") "key" "header_name" "default" "x-client-identity") }}
{{- $upstream := printf "%s.%s.svc:%d" (include "durable-streams.fullname" .) .Release.Namespace (int .Values.service.ports.api) }}
{{- $lines := dict
  "server 127.0.0.1:4437;" (printf "server %s;" $upstream)
  "max_size=1g " (printf "max_size=%s " .Values.cache.maxSize)
  "$arg_access_token " (printf "$arg_%s " (get $auth "query_param" | default "access_token"))
  "$http_x_client_identity " (printf "$http_%s " ($identity | lower | replace "-" "_"))
  "listen 8080;" (printf "listen %d;" (int .Values.cache.port))
  "proxy_read_timeout 90s;" (printf "proxy_read_timeout %ss;" $timeout)
  "proxy_send_timeout 90s;" (printf "proxy_send_timeout %ss;" $timeout)
  "proxy_cache_lock_age 40s;" (printf "proxy_cache_lock_age %ds;" (add $longPoll 10))
  "proxy_cache_lock_timeout 40s;" (printf "proxy_cache_lock_timeout %ds;" (add $longPoll 10))
}}
{{- $out := list }}
{{- range (splitList "\n" $conf) }}
{{- $line := . }}
{{- if contains "# chart:" $line }}
{{- range $from, $to := $lines }}{{ $line = replace $from $to $line }}{{ end }}
{{- end }}
{{- $out = append $out $line }}
{{- end }}
{{- join "\n" $out }}
{{- end }}

{{/* The PersistentVolumeClaim of pod <ordinal>: "<template>-<fullname>-<ordinal>". */}}
{{- define "durable-streams.dataClaimName" -}}
{{- printf "%s-%s-%d" (include "durable-streams.dataVolumeName" .ctx) (include "durable-streams.fullname" .ctx) (int .ordinal) }}
{{- end }}

{{/* Labels of the chart's helper pods (backup Jobs, helm test): another
app.kubernetes.io/name, so no Service, PodDisruptionBudget or
NetworkPolicy of the server ever selects them. Argument: (dict "ctx" $ "component" "backup") */}}
{{- define "durable-streams.helperSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-%s" (include "durable-streams.name" .ctx) .component | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of a helper resource. Argument: (dict "ctx" $ "component" "backup") */}}
{{- define "durable-streams.helperLabels" -}}
helm.sh/chart: {{ include "durable-streams.chart" .ctx }}
{{ include "durable-streams.helperSelectorLabels" . }}
app.kubernetes.io/version: {{ include "durable-streams.imageTag" .ctx | quote }}
app.kubernetes.io/part-of: durable-streams
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
A security context without the fixed IDs when openshift.enabled, whose SCC
assigns them. Argument: (dict "ctx" $ "context" <a securityContext dict>)
*/}}
{{- define "durable-streams.securityContext" -}}
{{- $context := deepCopy .context }}
{{- if .ctx.Values.openshift.enabled }}
{{- $context = omit $context "runAsUser" "runAsGroup" "fsGroup" }}
{{- end }}
{{- toYaml $context }}
{{- end }}

{{/*
"true" when a custom resource's API is served (or forced), else "".
Argument: (dict "ctx" $ "api" "monitoring.coreos.com/v1/ServiceMonitor" "force" bool)
*/}}
{{- define "durable-streams.apiServed" -}}
{{- if or .force (.ctx.Capabilities.APIVersions.Has .api) }}true{{ end }}
{{- end }}

{{/* "true" when the ServiceMonitor is rendered. */}}
{{- define "durable-streams.serviceMonitorRendered" -}}
{{- $sm := .Values.metrics.serviceMonitor }}
{{- if and $sm.enabled (include "durable-streams.apiServed" (dict "ctx" . "api" "monitoring.coreos.com/v1/ServiceMonitor" "force" $sm.force)) }}true{{ end }}
{{- end }}

{{/* "true" when the PrometheusRule is rendered. */}}
{{- define "durable-streams.prometheusRuleRendered" -}}
{{- $pr := .Values.metrics.prometheusRule }}
{{- if and $pr.enabled (include "durable-streams.apiServed" (dict "ctx" . "api" "monitoring.coreos.com/v1/PrometheusRule" "force" $pr.force)) }}true{{ end }}
{{- end }}

{{/* The stream base path (http.stream_base_path, default /v1/stream). */}}
{{- define "durable-streams.streamBasePath" -}}
{{- (.Values.config.http | default dict).stream_base_path | default "/v1/stream" }}
{{- end }}

{{/* The API's in-cluster URL through the Service: scheme://<svc>.<ns>.svc:<port>. */}}
{{- define "durable-streams.serviceUrl" -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "https" "http" (ne .Values.tls.mode "http")) (include "durable-streams.fullname" .) .Release.Namespace (int .Values.service.ports.api) }}
{{- end }}

{{/* A server config key: (dict "ctx" $ "path" (list "transport" "connection") "key" "long_poll_timeout_secs" "default" 30) */}}
{{- define "durable-streams.configValue" -}}
{{- $table := .ctx.Values.config | default dict }}
{{- range .path }}{{ $table = get $table . | default dict }}{{ end }}
{{- get $table .key | default .default }}
{{- end }}

{{/*
Seconds a proxy in front of the API must wait for a response: the longer of
the long-poll timeout and the SSE reconnect interval, plus 30.
*/}}
{{- define "durable-streams.proxyTimeoutSecs" -}}
{{- $connection := list "transport" "connection" }}
{{- $longPoll := include "durable-streams.configValue" (dict "ctx" . "path" $connection "key" "long_poll_timeout_secs" "default" 30) | int }}
{{- $sse := include "durable-streams.configValue" (dict "ctx" . "path" $connection "key" "sse_reconnect_interval_secs" "default" 60) | int }}
{{- if eq $sse 0 }}{{ $sse = 3600 }}{{ end }}
{{- add (max $longPoll $sse) 30 }}
{{- end }}

{{/* The helm test client certificate Secret for mTLS ("" when there is none). */}}
{{- define "durable-streams.testClientSecretName" -}}
{{- if .Values.tests.clientCertSecret }}
{{- .Values.tests.clientCertSecret }}
{{- else if and .Values.tls.certManager.enabled (not .Values.tls.clientCA.secretName) }}
{{- printf "%s-test-client" (include "durable-streams.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The Secret whose ca.crt verifies the server certificate for helm test and
the NOTES example ("" when there is none): tests.caSecret, else the one
cert-manager writes.
*/}}
{{- define "durable-streams.testCaSecretName" -}}
{{- if .Values.tests.caSecret }}
{{- .Values.tests.caSecret }}
{{- else if .Values.tls.certManager.enabled }}
{{- include "durable-streams.tlsSecretName" . }}
{{- end }}
{{- end }}

{{/* Why the helm test pod cannot be rendered ("" when it can). */}}
{{- define "durable-streams.testMissing" -}}
{{- if and (include "durable-streams.tlsEnabled" .) (not (include "durable-streams.testCaSecretName" .)) }}
{{- print "TLS needs tests.caSecret (a Secret with the CA in ca.crt) or tls.certManager.enabled" }}
{{- else if and (eq .Values.tls.mode "mtls") (not (include "durable-streams.testClientSecretName" .)) }}
{{- print "mTLS needs tests.clientCertSecret or tls.certManager.enabled" }}
{{- end }}
{{- end }}

{{/* A helper image reference; a digest wins over the tag. Argument: the image dict. */}}
{{- define "durable-streams.helperImage" -}}
{{- if .digest }}{{ printf "%s@%s" .repository .digest }}{{ else }}{{ printf "%s:%s" .repository .tag }}{{ end }}
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
{{- if and (eq .Values.storage.mode "memory") (gt (include "durable-streams.replicas" . | int) 1) (not .Values.allowMultipleReplicas) }}
{{- fail "replicaCount > 1: every pod holds its own streams, so a Service spreading requests over pods breaks the protocol; route each stream to one pod (see the chart README) and set allowMultipleReplicas=true" }}
{{- end }}
{{- if and (include "durable-streams.durable" .) (gt (include "durable-streams.replicas" . | int) 1) (not .Values.allowMultipleReplicas) }}
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
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) }}
{{- fail "httpRoute.enabled=true needs httpRoute.parentRefs: the Gateway(s) to attach the route to" }}
{{- end }}
{{- if and .Values.cnpg.enabled (not (include "durable-streams.shared" .)) }}
{{- fail (printf "cnpg.enabled=true needs storage.mode=postgres, not %s" .Values.storage.mode) }}
{{- end }}
{{- if and .Values.cnpg.enabled (not (include "durable-streams.cnpgRendered" .)) }}
{{- fail "cnpg.enabled=true: this cluster serves no postgresql.cnpg.io/v1 Cluster; install the CloudNativePG operator first, or set cnpg.force=true when rendering without a cluster (helm template)" }}
{{- end }}
{{- if and .Values.cnpg.enabled (or .Values.postgres.existingSecret .Values.postgres.caSecret) }}
{{- fail "cnpg.enabled=true takes the URL and CA from the Secrets CloudNativePG writes: leave postgres.existingSecret and postgres.caSecret empty" }}
{{- end }}
{{- if and .Values.cnpg.enabled (ge (int .Values.cnpg.synchronous.number) (int .Values.cnpg.instances)) }}
{{- fail (printf "cnpg.synchronous.number (%d) must be below cnpg.instances (%d): a commit waits for that many standbys" (int .Values.cnpg.synchronous.number) (int .Values.cnpg.instances)) }}
{{- end }}
{{- if and .Values.cache.enabled (include "durable-streams.tlsEnabled" .) }}
{{- fail "cache.enabled=true needs tls.mode=http: the cache speaks plain HTTP to the server and a shared cache cannot carry client certificates; terminate TLS in front of the cache (ingress)" }}
{{- end }}
{{- if and .Values.backup.enabled (not (include "durable-streams.durable" .)) }}
{{- fail (printf "backup.enabled=true needs a storage.mode that keeps data on a volume (file-fast, file-durable, acid), not %s; with PostgreSQL use the database's own backups" .Values.storage.mode) }}
{{- end }}
{{- if and .Values.backup.enabled (not .Values.persistence.enabled) }}
{{- fail "backup.enabled=true needs persistence.enabled=true: another pod cannot reach an emptyDir" }}
{{- end }}
{{- if and .Values.backup.enabled .Values.backup.persistence.existingClaims (ne (len .Values.backup.persistence.existingClaims) (include "durable-streams.replicas" . | int)) }}
{{- fail "backup.persistence.existingClaims needs one claim per pod (replicaCount)" }}
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

{{/* The server.toml text of the ConfigMap; the pods' checksum/config hashes exactly this. */}}
{{- define "durable-streams.serverToml" -}}
# Rendered by the durable-streams Helm chart from .Values.config and the
# chart's listener, storage, TLS and metrics settings.
{{ include "durable-streams.toml" (dict "prefix" "" "table" (include "durable-streams.serverConfig" . | fromYaml)) | trim }}
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

{{/*
An egress rule to the host and port of a URL: to the given peers, else to
the host's address when it is an IP, else the port to anywhere (a
NetworkPolicy cannot match host names). Nothing for loopback hosts.
Argument: (dict "url" "https://host:port/..." "to" <peers> "what" "comment")
*/}}
{{- define "durable-streams.urlEgress" -}}
{{- $url := urlParse .url }}
{{- $hostPort := $url.host }}
{{- $host := regexReplaceAll ":[0-9]+$" $hostPort "" | trimPrefix "[" | trimSuffix "]" }}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $hostPort) }}
{{- if not $port }}{{ $port = ternary "443" "80" (eq $url.scheme "https") }}{{ end }}
{{- if not (or (eq $host "localhost") (hasPrefix "127." $host) (eq $host "::1")) }}
# {{ .what }}: {{ $host }}:{{ $port }}
- ports:
    - port: {{ $port }}
      protocol: TCP
  {{- if .to }}
  to:
    {{- toYaml .to | nindent 4 }}
  {{- else if regexMatch "^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$" $host }}
  to:
    - ipBlock:
        cidr: {{ $host }}/32
  {{- else if contains ":" $host }}
  to:
    - ipBlock:
        cidr: {{ $host }}/128
  {{- end }}
{{- end }}
{{- end }}
