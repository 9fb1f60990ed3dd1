{{/* Names, labels and the settings every template shares. */}}

{{- define "quota.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "quota.fullname" -}}
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

{{/* A resource name that is also a DNS label: refused, not truncated, when too long (truncation could give two
regions one name). */}}
{{- define "quota.dnsLabel" -}}
{{- if gt (len .) 63 }}
{{- fail (printf "the resource name %q is longer than 63 characters: shorten the release name, fullnameOverride or the region name" .) }}
{{- end }}
{{- . }}
{{- end }}

{{- define "quota.centerName" -}}
{{- include "quota.dnsLabel" (printf "%s-center" (include "quota.fullname" .)) }}
{{- end }}

{{- define "quota.etcdName" -}}
{{- include "quota.dnsLabel" (printf "%s-etcd" (include "quota.fullname" .)) }}
{{- end }}

{{/* Called with (dict "root" $ "region" $region). */}}
{{- define "quota.agentName" -}}
{{- include "quota.dnsLabel" (printf "%s-agent-%s" (include "quota.fullname" .root) .region.name) }}
{{- end }}

{{- define "quota.redisName" -}}
{{- include "quota.dnsLabel" (printf "%s-redis-%s" (include "quota.fullname" .root) .region.name) }}
{{- end }}

{{- define "quota.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Called with (dict "root" $ "component" "center") or, for a region's parts, with "region" $region too. */}}
{{- define "quota.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quota.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .region }}
quota/region: {{ .name }}
{{- end }}
{{- end }}

{{- define "quota.labels" -}}
helm.sh/chart: {{ include "quota.chart" .root }}
{{ include "quota.selectorLabels" . }}
app.kubernetes.io/part-of: quota
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "quota.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The regions, checked: names that make valid resource names and the --region agents serve, each once. */}}
{{- define "quota.checkRegions" -}}
{{- $seen := dict }}
{{- range .Values.regions }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString .name)) }}
{{- fail (printf "regions: name %q must be lowercase letters, digits and '-' (it becomes part of resource names)" (toString .name)) }}
{{- end }}
{{- if hasKey $seen .name }}
{{- fail (printf "regions: %q is listed twice" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- end }}

{{/* A region's Redis URL when it comes from values (the chart's bundled Redis or regions[].redis.url); empty when
it comes from a Secret. */}}
{{- define "quota.ledgerUrl" -}}
{{- $redis := .region.redis | default dict }}
{{- if $redis.url }}
{{- $redis.url }}
{{- else if $redis.urlSecret }}
{{- else if .root.Values.redis.bundled }}
{{- printf "redis://%s:%v/%v" (include "quota.redisName" .) .root.Values.redis.port .root.Values.redis.db }}
{{- else }}
{{- fail (printf "regions[%s]: give redis.url or redis.urlSecret, or set redis.bundled=true" .region.name) }}
{{- end }}
{{- end }}

{{/* "true" when the chart runs this region's Redis. */}}
{{- define "quota.bundledRedis" -}}
{{- $redis := .region.redis | default dict }}
{{- if and .root.Values.redis.bundled (not $redis.url) (not $redis.urlSecret) }}true{{ end }}
{{- end }}

{{/* "true" when the chart runs etcd. */}}
{{- define "quota.bundledEtcd" -}}
{{- if and .Values.center.enabled (not .Values.etcd.endpoints) .Values.etcd.bundled }}true{{ end }}
{{- end }}

{{/* The center's --store: every etcd member's client address, then the key prefix. */}}
{{- define "quota.storeUrl" -}}
{{- if not (hasPrefix "/" .Values.etcd.prefix) }}
{{- fail (printf "etcd.prefix %q must start with /" .Values.etcd.prefix) }}
{{- end }}
{{- $endpoints := list }}
{{- if .Values.etcd.endpoints }}
{{- $endpoints = .Values.etcd.endpoints }}
{{- else if .Values.etcd.bundled }}
{{- $name := include "quota.etcdName" . }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $endpoints = append $endpoints (printf "%s-%d.%s.%s.svc.%s:2379" $name $i $name $.Release.Namespace $.Values.clusterDomain) }}
{{- end }}
{{- else }}
{{- fail "etcd: give etcd.endpoints of an existing cluster, or set etcd.bundled=true" }}
{{- end }}
{{- printf "etcd://%s%s" (join "," $endpoints) .Values.etcd.prefix }}
{{- end }}

{{- define "quota.centerAddress" -}}
{{- if .Values.center.enabled }}
{{- printf "%s:%v" (include "quota.centerName" .) .Values.center.port }}
{{- else if .Values.agent.centerAddress }}
{{- .Values.agent.centerAddress }}
{{- else }}
{{- fail "agent.centerAddress: the center's host:port is required when center.enabled is false" }}
{{- end }}
{{- end }}

{{/* A TOML table of scalar settings, keys sorted: (dict "table" "center" "settings" $dict). */}}
{{- define "quota.toml" -}}
[{{ .table }}]
{{- range $key, $value := .settings }}
{{- if or (kindIs "map" $value) (kindIs "slice" $value) }}
{{- fail (printf "%s.config.%s: settings are single values (numbers, strings, true/false)" $.table $key) }}
{{- end }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}

{{/* Settings the chart derives itself; setting them in config would disagree with probes, Services or Redis.
.managed maps each to the values that control it. */}}
{{- define "quota.refuseManaged" -}}
{{- range $key, $controlledBy := .managed }}
{{- if hasKey $.config $key }}
{{- fail (printf "%s.config.%s is set by the chart: use %s" $.table $key $controlledBy) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "quota.centerConfig" -}}
{{- include "quota.refuseManaged" (dict "table" "center" "config" .Values.center.config "managed" (dict "listen" "center.port" "store" "etcd.endpoints and etcd.prefix" "advertise" "center.port (each replica advertises its pod IP)" "metrics-listen" "metrics.port")) }}
{{- $managed := dict "listen" (printf "0.0.0.0:%v" .Values.center.port) "store" (include "quota.storeUrl" .) "metrics-listen" (printf "0.0.0.0:%v" .Values.metrics.port) }}
{{- include "quota.toml" (dict "table" "center" "settings" (merge $managed (deepCopy .Values.center.config))) }}
{{- end }}

{{/* (dict "root" $ "region" $region) */}}
{{- define "quota.agentConfig" -}}
{{- $config := merge (deepCopy (.region.config | default dict)) (deepCopy .root.Values.agent.config) }}
{{- include "quota.refuseManaged" (dict "table" "agent" "config" $config "managed" (dict "region" "regions[].name" "listen" "agent.port" "center" "agent.centerAddress" "ledger" "regions[].redis" "metrics-listen" "metrics.port")) }}
{{- $managed := dict "region" .region.name "listen" (printf "0.0.0.0:%v" .root.Values.agent.port) "center" (include "quota.centerAddress" .root) "metrics-listen" (printf "0.0.0.0:%v" .root.Values.metrics.port) }}
{{- $ledger := include "quota.ledgerUrl" . }}
{{- if $ledger }}
{{- $_ := set $managed "ledger" $ledger }}
{{- end }}
{{- include "quota.toml" (dict "table" "agent" "settings" (merge $managed $config)) }}
{{- end }}

{{/* The environment both servers share: where config.toml is, and how to log. */}}
{{- define "quota.commonEnv" -}}
- name: QUOTA_CONFIG
  value: /etc/quota/config.toml
- name: QUOTA_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: QUOTA_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/* gRPC probes on the standard health service of the server listening on .port. */}}
{{- define "quota.probes" -}}
startupProbe:
  grpc:
    port: {{ .port }}
  {{- toYaml .root.Values.probes.startup | nindent 2 }}
readinessProbe:
  grpc:
    port: {{ .port }}
  {{- toYaml .root.Values.probes.readiness | nindent 2 }}
livenessProbe:
  grpc:
    port: {{ .port }}
  {{- toYaml .root.Values.probes.liveness | nindent 2 }}
{{- end }}

{{- define "quota.lifecycle" -}}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ .Values.preStopSleepSeconds }}"]
{{- end }}

{{/* (dict "maxUnavailable" .. "minAvailable" ..) */}}
{{- define "quota.disruption" -}}
{{- if not (kindIs "invalid" .minAvailable) -}}
minAvailable: {{ .minAvailable }}
{{- else -}}
maxUnavailable: {{ .maxUnavailable }}
{{- end }}
{{- end }}

{{/* A soft spread of a workload's pods over nodes: (dict "root" $ "component" .. ["region" ..]). */}}
{{- define "quota.spreadAcrossNodes" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "quota.selectorLabels" . | nindent 8 }}
{{- end }}
