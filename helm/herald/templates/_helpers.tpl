{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.fullname" -}}
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

{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.labels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- end }}

{{/* Edge selector labels */}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: edge
{{- end }}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "herald.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* NATS names */}}
{{- define "herald.nats.fullname" -}}
{{- printf "%s-nats" (include "herald.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "herald.nats.headless" -}}
{{- printf "%s-nats-headless" (include "herald.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "herald.nats.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}-nats
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nats
{{- end }}

{{/* The NATS URL the edges and the setup Job use. */}}
{{- define "herald.nats.url" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc.cluster.local:%d" (include "herald.nats.fullname" .) .Release.Namespace (int .Values.nats.port) }}
{{- else }}
{{- required "nats.url is required when nats.enabled=false (e.g. nats://nats.nats.svc.cluster.local:4222)" .Values.nats.url }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the HS256 secret, or "" when none is used. */}}
{{- define "herald.auth.secretName" -}}
{{- $a := .Values.auth }}
{{- $c := default dict .Values.config.auth }}
{{- if $a.existingSecret }}
{{- $a.existingSecret }}
{{- else if $a.secret }}
{{- include "herald.fullname" . }}-auth
{{- else if or $c.hs256_secret $c.jwks_url $c.rs256_public_key $c.es256_public_key $c.connect_hook }}
{{- else if $a.generateSecret }}
{{- include "herald.fullname" . }}-auth
{{- else }}
{{- fail "no token key configured: set auth.existingSecret, auth.secret, config.auth.jwks_url (or rs256/es256 public key, connect_hook), or auth.generateSecret=true" }}
{{- end }}
{{- end }}

{{/* Render a scalar or list as a TOML value. */}}
{{- define "herald.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}{{ int64 . }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "herald.tomlValue" $v }}{{ end }}]
{{- else }}{{ fail (printf "config: unsupported value %v" .) }}
{{- end }}
{{- end }}

{{/* The effective herald.toml settings as a dict (chart-managed keys applied). */}}
{{- define "herald.configDict" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%d" (int .Values.containerPort)) }}
{{- $nats := default dict (get $cfg "nats") }}
{{- $_ := set $nats "url" (include "herald.nats.url" .) }}
{{- if .Values.nats.credentials.credsKey }}
{{- $_ := set $nats "creds_file" (printf "/etc/herald/nats/%s" .Values.nats.credentials.credsKey) }}
{{- end }}
{{- $_ := set $cfg "nats" $nats }}
{{- toYaml $cfg }}
{{- end }}

{{/* herald.toml */}}
{{- define "herald.toml" -}}
{{- $cfg := include "herald.configDict" . | fromYaml }}
# herald.toml rendered by the Herald Helm chart; see docs/CONFIG.md.
# Secrets come from the environment (HERALD_AUTH__HS256_SECRET, HERALD_NATS__*).
{{- range $k := keys $cfg | sortAlpha }}
{{- $v := get $cfg $k }}
{{- if not (kindIs "map" $v) }}
{{ $k }} = {{ include "herald.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $cfg | sortAlpha }}
{{- $v := get $cfg $k }}
{{- if kindIs "map" $v }}

[{{ $k }}]
{{- range $k2 := keys $v | sortAlpha }}
{{ $k2 }} = {{ include "herald.tomlValue" (get $v $k2) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Env and volume mounts shared by the edge and the setup Job. */}}
{{- define "herald.env.auth" -}}
{{- $secret := include "herald.auth.secretName" . }}
{{- if $secret }}
- name: HERALD_AUTH__HS256_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.auth.secretKey }}
{{- end }}
{{- end }}

{{/* herald setup needs no token key, so the Job gets only this part. */}}
{{- define "herald.env" -}}
- name: HERALD_CONFIG
  value: /etc/herald/herald.toml
{{- with .Values.nats.credentials }}
{{- if .existingSecret }}
{{- if .userKey }}
- name: HERALD_NATS__USER
  valueFrom:
    secretKeyRef: {name: {{ .existingSecret }}, key: {{ .userKey }}}
{{- end }}
{{- if .passwordKey }}
- name: HERALD_NATS__PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .existingSecret }}, key: {{ .passwordKey }}}
{{- end }}
{{- if .tokenKey }}
- name: HERALD_NATS__TOKEN
  valueFrom:
    secretKeyRef: {name: {{ .existingSecret }}, key: {{ .tokenKey }}}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "herald.volumeMounts" -}}
- name: config
  mountPath: /etc/herald/herald.toml
  subPath: herald.toml
  readOnly: true
{{- if .Values.nats.credentials.credsKey }}
- name: nats-creds
  mountPath: /etc/herald/nats
  readOnly: true
{{- end }}
{{- end }}

{{- define "herald.volumes" -}}
- name: config
  configMap:
    name: {{ include "herald.fullname" . }}
{{- include "herald.credsVolume" . }}
{{- end }}

{{- define "herald.credsVolume" -}}
{{- if .Values.nats.credentials.credsKey }}
- name: nats-creds
  secret:
    secretName: {{ required "nats.credentials.existingSecret is required with nats.credentials.credsKey" .Values.nats.credentials.existingSecret }}
    items:
      - key: {{ .Values.nats.credentials.credsKey }}
        path: {{ .Values.nats.credentials.credsKey }}
{{- end }}
{{- end }}

{{/* Fail early on values that would give a broken release. */}}
{{- define "herald.validate" -}}
{{- $drain := int (default 10000 (dig "timeouts" "drain_timeout_ms" 10000 .Values.config)) }}
{{- if le (mul (int .Values.terminationGracePeriodSeconds) 1000) (add $drain (mul (int .Values.preStopSleepSeconds) 1000)) }}
{{- fail (printf "terminationGracePeriodSeconds (%d s) must exceed preStopSleepSeconds (%d s) + config.timeouts.drain_timeout_ms (%d ms)" (int .Values.terminationGracePeriodSeconds) (int .Values.preStopSleepSeconds) $drain) }}
{{- end }}
{{- if and .Values.auth.secret (lt (len .Values.auth.secret) 16) }}
{{- fail "auth.secret must be at least 16 bytes (use 32+ random bytes)" }}
{{- end }}
{{- if hasKey (default dict .Values.config.auth) "hs256_secret" }}
{{- fail "do not put config.auth.hs256_secret in values: use auth.secret or auth.existingSecret" }}
{{- end }}
{{- if .Values.nats.enabled }}
{{- $r := int (dig "stream" "replicas" 1 .Values.config) }}
{{- if gt $r (int .Values.nats.replicas) }}
{{- fail (printf "config.stream.replicas (%d) cannot exceed nats.replicas (%d)" $r (int .Values.nats.replicas)) }}
{{- end }}
{{- end }}
{{- end }}
