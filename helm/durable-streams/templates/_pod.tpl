{{/*
The pod template shared by the StatefulSet (durable storage modes) and the
Deployment (memory and postgres modes).
*/}}
{{- define "durable-streams.podTemplate" -}}
{{- $tlsEnabled := include "durable-streams.tlsEnabled" . }}
{{- $probePort := include "durable-streams.probePort" . }}
{{- $probeScheme := include "durable-streams.probeScheme" . -}}
metadata:
  labels:
    {{- include "durable-streams.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Pods roll when the rendered server.toml changes, and only then (labels
    # and the chart version are not hashed). Certificate rotations need no
    # roll: the server reloads the mounted directory.
    checksum/config: {{ printf "%s\n" (include "durable-streams.serverToml" .) | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "durable-streams.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  enableServiceLinks: false
  # Longer than config.server.drain_timeout_secs (the chart refuses
  # otherwise), so the drain finishes before the kubelet sends SIGKILL.
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- include "durable-streams.securityContext" (dict "ctx" . "context" .Values.podSecurityContext) | nindent 4 }}
  containers:
    - name: server
      image: {{ include "durable-streams.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - serve
        - --config
        - {{ include "durable-streams.configDir" . }}/server.toml
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        - name: DS_PROFILE
          value: {{ .Values.profile | quote }}
        {{- if include "durable-streams.shared" . }}
        {{- if .Values.cnpg.enabled }}
        # CloudNativePG's URL (postgresql://<owner>:<password>@<cluster>-rw.<ns>:5432/<database>),
        # with TLS verified against the cluster's own CA.
        - name: CNPG_APP_URI
          valueFrom:
            secretKeyRef:
              name: {{ include "durable-streams.postgresSecretName" . }}
              key: {{ include "durable-streams.postgresSecretKey" . }}
        - name: DS_STORAGE__POSTGRES__URL
          value: "$(CNPG_APP_URI)?sslmode=verify-full&sslrootcert={{ include "durable-streams.postgresCaDir" . }}/ca.crt"
        {{- else }}
        # The URL holds the password: it stays in the Secret, never in the ConfigMap.
        - name: DS_STORAGE__POSTGRES__URL
          valueFrom:
            secretKeyRef:
              name: {{ include "durable-streams.postgresSecretName" . }}
              key: {{ include "durable-streams.postgresSecretKey" . }}
        {{- end }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: api
          containerPort: {{ .Values.ports.api }}
          protocol: TCP
        {{- if .Values.metrics.separatePort }}
        - name: metrics
          containerPort: {{ .Values.ports.metrics }}
          protocol: TCP
        {{- end }}
      {{- if .Values.probes.startup.enabled }}
      # Until the first success the other probes wait. `/healthz` answers as
      # soon as the listeners are bound, before storage has recovered
      # (`/readyz` says `recovering` meanwhile), so this covers only start-up.
      startupProbe:
        httpGet:
          path: /healthz
          port: {{ $probePort }}
          scheme: {{ $probeScheme }}
        {{- toYaml (omit .Values.probes.startup "enabled") | nindent 8 }}
      {{- end }}
      {{- if .Values.probes.liveness.enabled }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: {{ $probePort }}
          scheme: {{ $probeScheme }}
        {{- toYaml (omit .Values.probes.liveness "enabled") | nindent 8 }}
      {{- end }}
      {{- if .Values.probes.readiness.enabled }}
      # /readyz turns 503 as soon as SIGTERM starts the drain.
      readinessProbe:
        httpGet:
          path: /readyz
          port: {{ $probePort }}
          scheme: {{ $probeScheme }}
        {{- toYaml (omit .Values.probes.readiness "enabled") | nindent 8 }}
      {{- end }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "durable-streams.securityContext" (dict "ctx" . "context" .Values.securityContext) | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: {{ include "durable-streams.configDir" . }}
          readOnly: true
        {{- if include "durable-streams.durable" . }}
        - name: {{ include "durable-streams.dataVolumeName" . }}
          mountPath: {{ include "durable-streams.dataDir" . }}
        {{- end }}
        {{- if $tlsEnabled }}
        # Whole directories, never subPath: the kubelet swaps the ..data
        # symlink on rotation and the server reloads what it watches.
        - name: tls
          mountPath: {{ include "durable-streams.tlsDir" . }}
          readOnly: true
        {{- if and (eq .Values.tls.mode "mtls") .Values.tls.clientCA.secretName }}
        - name: client-ca
          mountPath: {{ include "durable-streams.clientCaDir" . }}
          readOnly: true
        {{- end }}
        {{- end }}
        {{- if and .Values.subscriptions.enabled .Values.subscriptions.signingKeySecret }}
        - name: webhook-signing-key
          mountPath: {{ include "durable-streams.webhookKeyDir" . }}
          readOnly: true
        {{- end }}
        {{- if .Values.auth.jwksSecret }}
        - name: auth-jwks
          mountPath: {{ include "durable-streams.authJwksDir" . }}
          readOnly: true
        {{- end }}
        {{- if .Values.auth.apiKeysSecret }}
        - name: auth-api-keys
          mountPath: {{ include "durable-streams.authApiKeysDir" . }}
          readOnly: true
        {{- end }}
        {{- if and (include "durable-streams.shared" .) (include "durable-streams.postgresCaSecretName" .) }}
        - name: postgres-ca
          mountPath: {{ include "durable-streams.postgresCaDir" . }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "durable-streams.fullname" . }}
    {{- if and (include "durable-streams.durable" .) (not .Values.persistence.enabled) }}
    - name: {{ include "durable-streams.dataVolumeName" . }}
      emptyDir: {}
    {{- end }}
    {{- if $tlsEnabled }}
    - name: tls
      secret:
        secretName: {{ include "durable-streams.tlsSecretName" . }}
        defaultMode: 0440
    {{- if and (eq .Values.tls.mode "mtls") .Values.tls.clientCA.secretName }}
    - name: client-ca
      secret:
        secretName: {{ .Values.tls.clientCA.secretName }}
        defaultMode: 0440
    {{- end }}
    {{- end }}
    {{- if and .Values.subscriptions.enabled .Values.subscriptions.signingKeySecret }}
    - name: webhook-signing-key
      secret:
        secretName: {{ .Values.subscriptions.signingKeySecret }}
        defaultMode: 0440
    {{- end }}
    {{- if .Values.auth.jwksSecret }}
    - name: auth-jwks
      secret:
        secretName: {{ .Values.auth.jwksSecret }}
        defaultMode: 0440
    {{- end }}
    {{- if .Values.auth.apiKeysSecret }}
    - name: auth-api-keys
      secret:
        secretName: {{ .Values.auth.apiKeysSecret }}
        defaultMode: 0440
    {{- end }}
    {{- if and (include "durable-streams.shared" .) (include "durable-streams.postgresCaSecretName" .) }}
    # Only the CA certificate (CloudNativePG's CA Secret also holds its key).
    - name: postgres-ca
      secret:
        secretName: {{ include "durable-streams.postgresCaSecretName" . }}
        defaultMode: 0440
        items:
          - key: {{ ternary "ca.crt" .Values.postgres.caSecretKey .Values.cnpg.enabled }}
            path: ca.crt
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- range .Values.topologySpreadConstraints }}
    {{- $constraint := deepCopy . }}
    {{- if not (hasKey $constraint "labelSelector") }}
    {{- $_ := set $constraint "labelSelector" (dict "matchLabels" (include "durable-streams.selectorLabels" $ | fromYaml)) }}
    {{- end }}
    - {{ toYaml $constraint | nindent 6 | trim }}
    {{- end }}
  {{- end }}
{{- end }}
