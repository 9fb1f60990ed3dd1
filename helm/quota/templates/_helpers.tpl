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

{{/* The headless Service that gives each center replica its DNS name (the name it advertises when it leads). */}}
{{- define "quota.centerPodsName" -}}
{{- include "quota.dnsLabel" (printf "%s-center-pods" (include "quota.fullname" .)) }}
{{- end }}

{{- define "quota.consoleName" -}}
{{- include "quota.dnsLabel" (printf "%s-console" (include "quota.fullname" .)) }}
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
it comes from a Secret. The bundled Redis serves TLS only, to the region's ACL user (quota.redisUser). */}}
{{- define "quota.ledgerUrl" -}}
{{- $redis := .region.redis | default dict }}
{{- if $redis.url }}
{{- $redis.url }}
{{- else if $redis.urlSecret }}
{{- else if .root.Values.redis.bundled }}
{{- printf "rediss://%s@%s:%v/%v" (include "quota.redisUser" .) (include "quota.redisName" .) .root.Values.redis.port .root.Values.redis.db }}
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

{{/* The center's --store. The bundled etcd: etcds:// to its headless Service's name, which the center resolves
to every member (and again when they move), and which the members' certificate carries (the name the center
verifies). An existing etcd: every member's client address, etcds:// with etcd.tls.enabled. Then the prefix. */}}
{{- define "quota.storeUrl" -}}
{{- if not (hasPrefix "/" .Values.etcd.prefix) }}
{{- fail (printf "etcd.prefix %q must start with /" .Values.etcd.prefix) }}
{{- end }}
{{- if .Values.etcd.endpoints }}
{{- printf "%s://%s%s" (ternary "etcds" "etcd" (.Values.etcd.tls.enabled | default false)) (join "," .Values.etcd.endpoints) .Values.etcd.prefix }}
{{- else if .Values.etcd.bundled }}
{{- printf "etcds://%s:2379%s" (include "quota.etcdHost" .) .Values.etcd.prefix }}
{{- else }}
{{- fail "etcd: give etcd.endpoints of an existing cluster, or set etcd.bundled=true" }}
{{- end }}
{{- end }}

{{/* Where agents and the console call the center: its Service; with several groups, each group's Service after
its name (default=CENTER:PORT,g1=CENTER-g1:PORT,...), so they route each promotion to the group serving it. */}}
{{- define "quota.centerAddress" -}}
{{- if .Values.center.enabled }}
{{- $groups := include "quota.centerGroups" . | fromJsonArray }}
{{- $addresses := list }}
{{- range $g := $groups }}
{{- $address := printf "%s:%v" $g.name $.Values.center.port }}
{{- $addresses = append $addresses (ternary $address (printf "%s=%s" $g.group $address) (eq (len $groups) 1)) }}
{{- end }}
{{- join "," $addresses }}
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
{{- include "quota.refuseInsecure" (dict "table" "center" "config" .Values.center.config) }}
{{- include "quota.refuseManaged" (dict "table" "center" "config" .Values.center.config "managed" (merge (dict "listen" "center.port" "store" "etcd.endpoints and etcd.prefix" "etcd-ca" "etcd.tls" "etcd-cert" "etcd.tls" "etcd-key" "etcd.tls" "etcd-user" "etcd.auth" "etcd-password-file" "etcd.auth" "advertise" "center.port (each replica advertises its pod's DNS name)" "metrics-listen" "metrics.port" "metrics-promotions" "metrics.promotions") (include "quota.tlsManaged" . | fromYaml))) }}
{{- $managed := dict "listen" (printf "0.0.0.0:%v" .Values.center.port) "store" (include "quota.storeUrl" .) "metrics-listen" (printf "0.0.0.0:%v" .Values.metrics.port) "metrics-promotions" (int .Values.metrics.promotions) }}
{{- $managed = merge $managed (include "quota.tlsSettings" . | fromYaml) (include "quota.centerBackend" . | fromYaml).settings }}
{{- include "quota.toml" (dict "table" "center" "settings" (merge $managed (deepCopy .Values.center.config))) }}
{{- end }}

{{/* (dict "root" $ "region" $region) */}}
{{- define "quota.agentConfig" -}}
{{- $config := merge (deepCopy (.region.config | default dict)) (deepCopy .root.Values.agent.config) }}
{{- include "quota.refuseInsecure" (dict "table" "agent" "config" $config) }}
{{- include "quota.refuseManaged" (dict "table" "agent" "config" $config "managed" (merge (dict "region" "regions[].name" "listen" "agent.port" "center" "agent.centerAddress" "ledger" "regions[].redis" "ledger-ca" "regions[].redis.tls" "ledger-cert" "regions[].redis.tls" "ledger-key" "regions[].redis.tls" "ledger-password-file" "regions[].redis.passwordSecret" "metrics-listen" "metrics.port" "metrics-promotions" "metrics.promotions") (include "quota.tlsManaged" .root | fromYaml))) }}
{{- $managed := dict "region" .region.name "listen" (printf "0.0.0.0:%v" .root.Values.agent.port) "center" (include "quota.centerAddress" .root) "metrics-listen" (printf "0.0.0.0:%v" .root.Values.metrics.port) "metrics-promotions" (int .root.Values.metrics.promotions) }}
{{- $managed = merge $managed (include "quota.tlsSettings" .root | fromYaml) (include "quota.agentBackend" . | fromYaml).settings }}
{{- $ledger := include "quota.ledgerUrl" . }}
{{- if $ledger }}
{{- $_ := set $managed "ledger" $ledger }}
{{- end }}
{{- include "quota.toml" (dict "table" "agent" "settings" (merge $managed $config)) }}
{{- end }}

{{/* The environment both servers share: where config.toml is, and how to log. */}}
{{- define "quota.commonEnv" -}}
- name: QUOTA_CONFIG
  value: /etc/quota/config/config.toml
- name: QUOTA_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: QUOTA_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/* Probes on GET /healthz of the server's metrics port (200 while it serves, 503 from SIGTERM on): Kubernetes'
gRPC probes cannot present the client certificate the gRPC port requires. */}}
{{- define "quota.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml .Values.probes.startup | nindent 2 }}
readinessProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml .Values.probes.readiness | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml .Values.probes.liveness | nindent 2 }}
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

{{/* Mutual TLS. Every server reads its certificate, key and CA from a Secret of cert-manager's shape (tls.crt,
tls.key, ca.crt) mounted here; the servers read the files again when the Secret changes. */}}
{{- define "quota.tlsDir" -}}/etc/quota/tls{{- end }}

{{/* The [center]/[agent] settings that point the server at its mounted Secret, as YAML (fromYaml). */}}
{{- define "quota.tlsSettings" -}}
{{- $dir := include "quota.tlsDir" . }}
tls-cert: {{ printf "%s/tls.crt" $dir }}
tls-key: {{ printf "%s/tls.key" $dir }}
tls-ca: {{ printf "%s/ca.crt" $dir }}
trust-domain: {{ .Values.tls.trustDomain | quote }}
{{- end }}

{{/* Those settings, each with the values that control it (for quota.refuseManaged), as YAML. */}}
{{- define "quota.tlsManaged" -}}
tls-cert: tls.center.secretName and regions[].tls.secretName
tls-key: tls.center.secretName and regions[].tls.secretName
tls-ca: tls.center.secretName and regions[].tls.secretName
trust-domain: tls.trustDomain
{{- end }}

{{/* insecure (plaintext) in a server's config: (dict "table" .. "config" ..). */}}
{{- define "quota.refuseInsecure" -}}
{{- if hasKey .config "insecure" }}
{{- fail (printf "%s.config.insecure: the chart always serves mutual TLS (the servers allow plaintext on loopback only); give the certificates' Secrets through tls and regions[].tls" .table) }}
{{- end }}
{{- end }}

{{- define "quota.centerTlsSecret" -}}
{{- .Values.tls.center.secretName | default (printf "%s-center-tls" (include "quota.fullname" .)) }}
{{- end }}

{{/* (dict "root" $ "region" $region) */}}
{{- define "quota.agentTlsSecret" -}}
{{- (.region.tls | default dict).secretName | default (printf "%s-agent-%s-tls" (include "quota.fullname" .root) .region.name) }}
{{- end }}

{{- define "quota.centerIdentity" -}}
{{- printf "spiffe://%s/center" .Values.tls.trustDomain }}
{{- end }}

{{/* (dict "root" $ "region" $region) */}}
{{- define "quota.agentIdentity" -}}
{{- printf "spiffe://%s/region/%s/agent" .root.Values.tls.trustDomain .region.name }}
{{- end }}

{{/* A Service's DNS names, short to fully qualified (gRPC checks the name a client dials against the server
certificate's DNS SANs): (dict "root" $ "service" NAME), as a JSON list. */}}
{{- define "quota.serviceDnsNames" -}}
{{- $namespace := .root.Release.Namespace }}
{{- list .service (printf "%s.%s" .service $namespace) (printf "%s.%s.svc" .service $namespace) (printf "%s.%s.svc.%s" .service $namespace .root.Values.clusterDomain) | toJson }}
{{- end }}

{{/* The DNS name center replica $(POD_NAME) advertises when it leads: its name under the headless Service. */}}
{{- define "quota.centerPodDomain" -}}
{{- printf "%s.%s.svc.%s" (include "quota.centerPodsName" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* The center groups (center.groups of them), as a JSON list of {group, name, pods, domain, component, args}: the
first is the default group, named as a one-group release always was; group i > 0 is "gI", its resources named
CENTER-gI and its pods labelled component center-gI, serving with --group gI (its own etcd prefix and election). */}}
{{- define "quota.centerGroups" -}}
{{- $groups := list }}
{{- range $i := until (int .Values.center.groups) }}
{{- $suffix := ternary "" (printf "-g%d" $i) (eq $i 0) }}
{{- $name := include "quota.dnsLabel" (printf "%s%s" (include "quota.centerName" $) $suffix) }}
{{- $pods := include "quota.dnsLabel" (printf "%s%s" (include "quota.centerPodsName" $) $suffix) }}
{{- $domain := printf "%s.%s.svc.%s" $pods $.Release.Namespace $.Values.clusterDomain }}
{{- $args := ternary list (list "--group" (printf "g%d" $i)) (eq $i 0) }}
{{- $group := ternary "default" (printf "g%d" $i) (eq $i 0) }}
{{- $groups = append $groups (dict "group" $group "name" $name "pods" $pods "domain" $domain "component" (printf "center%s" $suffix) "args" $args) }}
{{- end }}
{{- toJson $groups }}
{{- end }}

{{/* The names the center's certificate must carry, as a JSON list: each group's Service's (budget owners,
agents), each replica's under its group's headless Service (agents follow the leader there), and
tls.center.dnsNames. */}}
{{- define "quota.centerDnsNames" -}}
{{- $names := list }}
{{- range $g := include "quota.centerGroups" . | fromJsonArray }}
{{- $names = concat $names (include "quota.serviceDnsNames" (dict "root" $ "service" $g.name) | fromJsonArray) }}
{{- range $i := until (int $.Values.center.replicas) }}
{{- $names = append $names (printf "%s-%d.%s" $g.name $i $g.domain) }}
{{- end }}
{{- end }}
{{- concat $names (.Values.tls.center.dnsNames | default list) | uniq | toJson }}
{{- end }}

{{/* (dict "root" $ "region" $region): the region's agent Service's names (order services call it) and
regions[].tls.dnsNames, as a JSON list. */}}
{{- define "quota.agentDnsNames" -}}
{{- $names := include "quota.serviceDnsNames" (dict "root" .root "service" (include "quota.agentName" .)) | fromJsonArray }}
{{- concat $names ((.region.tls | default dict).dnsNames | default list) | uniq | toJson }}
{{- end }}

{{/* Every server's certificate is its own (an identity per role and region): two servers given one Secret would
fail at start with the other's identity. */}}
{{- define "quota.checkTlsSecrets" -}}
{{- $seen := dict }}
{{- if .Values.center.enabled }}
{{- $_ := set $seen (include "quota.centerTlsSecret" .) "the center" }}
{{- end }}
{{- range $region := .Values.regions }}
{{- $secret := include "quota.agentTlsSecret" (dict "root" $ "region" $region) }}
{{- if hasKey $seen $secret }}
{{- fail (printf "tls: the Secret %q is given to both %s and region %s; each needs its own certificate (set regions[].tls.secretName)" $secret (get $seen $secret) $region.name) }}
{{- end }}
{{- $_ := set $seen $secret (printf "region %s" $region.name) }}
{{- end }}
{{- end }}

{{/* The container's mounts: config.toml and the TLS Secret. */}}
{{- define "quota.volumeMounts" -}}
volumeMounts:
  - name: config
    mountPath: /etc/quota/config
    readOnly: true
  - name: tls
    mountPath: {{ include "quota.tlsDir" . }}
    readOnly: true
{{- end }}

{{/* The pod's volumes: (dict "root" $ "configMap" NAME "secret" NAME). The Secret is mounted whole (a subPath
would not see rotations); listing its keys makes a missing one an event on the pod, not a crash loop. */}}
{{- define "quota.volumes" -}}
volumes:
  - name: config
    configMap:
      name: {{ .configMap }}
  - name: tls
    secret:
      secretName: {{ .secret }}
      items:
        - {key: tls.crt, path: tls.crt}
        - {key: tls.key, path: tls.key}
        - {key: ca.crt, path: ca.crt}
{{- end }}

{{/* A cert-manager Certificate that keeps Secret .secret filled: (dict "root" $ "component" .. ["region" ..]
"secret" NAME "uri" SPIFFE-ID "dnsNames" LIST); the backends' (Redis, etcd) have no "uri". */}}
{{- define "quota.certificate" -}}
{{- $certManager := .root.Values.tls.certManager }}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ .secret }}
  labels:
    {{- include "quota.labels" . | nindent 4 }}
spec:
  secretName: {{ .secret }}
  secretTemplate:
    labels:
      {{- include "quota.labels" . | nindent 6 }}
  {{- with $certManager.duration }}
  duration: {{ . }}
  {{- end }}
  {{- with $certManager.renewBefore }}
  renewBefore: {{ . }}
  {{- end }}
  privateKey:
    algorithm: ECDSA
    size: 256
    # A new key with every renewal; the servers load it without a restart.
    rotationPolicy: Always
  # Each server is also a client (agents call the center with the same certificate).
  usages:
    - digital signature
    - server auth
    - client auth
  {{- with .uri }}
  # The identity the server must hold; peers authorize by it.
  uris:
    - {{ . }}
  {{- end }}
  # The names clients dial; gRPC checks them against the certificate.
  dnsNames:
    {{- toYaml .dnsNames | nindent 4 }}
  issuerRef:
    name: {{ required "tls.certManager.issuerRef.name: the Issuer or ClusterIssuer that signs the servers' certificates" $certManager.issuerRef.name }}
    kind: {{ $certManager.issuerRef.kind }}
    group: {{ $certManager.issuerRef.group }}
{{- end }}

{{/* The backends, secured: the bundled Redis and etcd serve TLS only and require client certificates from the
servers' CA; Redis admits each region's agents as an ACL user of their own, etcd the center as an RBAC user. */}}

{{/* (dict "root" $ "region" $region): the Redis ACL user a region's agents log in as
(region_agent.ledger.redis_acl.agent_user). */}}
{{- define "quota.redisUser" -}}
{{- printf "agent-%s" .region.name }}
{{- end }}

{{/* Every command the agents send to Redis (region_agent.ledger.redis_acl.LEDGER_COMMANDS: tests/helm checks they
are the same), as a JSON list. */}}
{{- define "quota.redisCommands" -}}
{{- list "ping" "select" "evalsha" "script|load" "multi" "exec" "get" "set" "del" "exists" "pexpire" "hget" "hmget" "hset" "hsetnx" "hincrby" "hexists" "hvals" "sadd" "sismember" "smembers" "zadd" "zrangebyscore" "zrem" "time" | toJson }}
{{- end }}

{{/* (dict "root" $ "region" $region): the bundled Redis's ACL file, the agents' user's password as a placeholder
the Redis pod replaces with its SHA-256 at start (region_agent.ledger.redis_acl.agent_acl_line): no one else may
log in, and the agents reach the region's keys (all under the hash tag {quota:REGION}; the chart's region names
hold no glob characters) with the ledger's commands only. */}}
{{- define "quota.redisAcl" -}}
{{- $commands := list }}
{{- range include "quota.redisCommands" . | fromJsonArray }}
{{- $commands = append $commands (printf "+%s" .) }}
{{- end -}}
user default off
user {{ include "quota.redisUser" . }} on #@PASSWORD_SHA256@ resetkeys ~{quota:{{ .region.name }}}:* resetchannels -@all {{ join " " $commands }}
{{ end }}

{{/* (dict "root" $ "region" $region): the Secret with the bundled Redis's certificate. */}}
{{- define "quota.redisTlsSecret" -}}
{{- ((.region.redis | default dict).tls | default dict).secretName | default (printf "%s-tls" (include "quota.redisName" .)) }}
{{- end }}

{{/* (dict "root" $ "region" $region): the Secret with the password of the region's Redis user, as YAML {name, key,
generated}: regions[].redis.passwordSecret, or for the bundled Redis one the chart generates; {} for none. */}}
{{- define "quota.redisPasswordSecret" -}}
{{- $redis := .region.redis | default dict }}
{{- with $redis.passwordSecret }}
name: {{ required (printf "regions[%s].redis.passwordSecret.name" $.region.name) .name }}
key: {{ .key | default "password" }}
{{- else }}
{{- if include "quota.bundledRedis" . }}
name: {{ printf "%s-password" (include "quota.redisName" .) }}
key: password
generated: true
{{- end }}
{{- end }}
{{- end }}

{{/* A Secret volume of one server's backend files: (dict "name" VOLUME "secret" NAME "items" {key: path}). */}}
{{- define "quota.secretVolume" -}}
name: {{ .name }}
secret:
  secretName: {{ .secret }}
  items:
    {{- range $key, $path := .items }}
    - {key: {{ $key | quote }}, path: {{ $path }}}
    {{- end }}
{{- end }}

{{/* (dict "root" $ "region" $region): how the region's agents reach a secured Redis, as YAML: settings (the
[agent] keys), volumes and mounts (the Secrets they name, each mounted whole in a directory of its own). */}}
{{- define "quota.agentBackend" -}}
{{- $redis := .region.redis | default dict }}
{{- $tls := $redis.tls | default dict }}
{{- $settings := dict }}
{{- $volumes := list }}
{{- $mounts := list }}
{{- $password := include "quota.redisPasswordSecret" . | fromYaml }}
{{- if $password.name }}
{{- $_ := set $settings "ledger-password-file" "/etc/quota/redis/password/password" }}
{{- $volumes = append $volumes (include "quota.secretVolume" (dict "name" "redis-password" "secret" $password.name "items" (dict $password.key "password")) | fromYaml) }}
{{- $mounts = append $mounts (dict "name" "redis-password" "mountPath" "/etc/quota/redis/password" "readOnly" true) }}
{{- end }}
{{- if include "quota.bundledRedis" . }}
{{- if or $tls.caSecret $tls.clientSecret }}
{{- fail (printf "regions[%s].redis.tls.caSecret and clientSecret apply to an existing Redis (redis.url or urlSecret): the bundled one's certificate is from the servers' CA, and the agents present their own" .region.name) }}
{{- end }}
{{- else }}
{{- if $tls.secretName }}
{{- fail (printf "regions[%s].redis.tls.secretName is the bundled Redis's certificate; an existing Redis (redis.url or urlSecret) has its own: drop it" .region.name) }}
{{- end }}
{{- if and $redis.url (not (hasPrefix "rediss://" $redis.url)) (or $tls.caSecret $tls.clientSecret) }}
{{- fail (printf "regions[%s].redis.tls: caSecret and clientSecret secure Redis over TLS, and redis.url is not rediss://" .region.name) }}
{{- end }}
{{- with $tls.caSecret }}
{{- $_ := set $settings "ledger-ca" "/etc/quota/redis/ca/ca.crt" }}
{{- $volumes = append $volumes (include "quota.secretVolume" (dict "name" "redis-ca" "secret" (required (printf "regions[%s].redis.tls.caSecret.name" $.region.name) .name) "items" (dict (.key | default "ca.crt") "ca.crt")) | fromYaml) }}
{{- $mounts = append $mounts (dict "name" "redis-ca" "mountPath" "/etc/quota/redis/ca" "readOnly" true) }}
{{- end }}
{{- with $tls.clientSecret }}
{{- $_ := set $settings "ledger-cert" "/etc/quota/redis/client/tls.crt" }}
{{- $_ := set $settings "ledger-key" "/etc/quota/redis/client/tls.key" }}
{{- $volumes = append $volumes (include "quota.secretVolume" (dict "name" "redis-client" "secret" . "items" (dict "tls.crt" "tls.crt" "tls.key" "tls.key")) | fromYaml) }}
{{- $mounts = append $mounts (dict "name" "redis-client" "mountPath" "/etc/quota/redis/client" "readOnly" true) }}
{{- end }}
{{- end }}
{{- dict "settings" $settings "volumes" $volumes "mounts" $mounts | toYaml }}
{{- end }}

{{/* The bundled etcd's headless Service, fully qualified: the one name the center and the auth Job dial. */}}
{{- define "quota.etcdHost" -}}
{{- printf "%s.%s.svc.%s" (include "quota.etcdName" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "quota.etcdTlsSecret" -}}
{{- .Values.etcd.tls.secretName | default (printf "%s-tls" (include "quota.etcdName" .)) }}
{{- end }}

{{/* The names the bundled etcd's certificate carries, as a JSON list: its headless Service's (clients dial the
fully qualified one), each member's (peers dial them, and check a peer's address against them) and
etcd.tls.dnsNames. */}}
{{- define "quota.etcdDnsNames" -}}
{{- $name := include "quota.etcdName" . }}
{{- $names := include "quota.serviceDnsNames" (dict "root" . "service" $name) | fromJsonArray }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $names = append $names (printf "%s-%d.%s" $name $i (include "quota.etcdHost" $)) }}
{{- end }}
{{- concat $names (.Values.etcd.tls.dnsNames | default list) | uniq | toJson }}
{{- end }}

{{/* The Secret with the center's etcd password, as YAML {name, key, generated}: etcd.auth.passwordSecret, or for
the bundled etcd one the chart generates; {} for none (an existing etcd without authentication). */}}
{{- define "quota.etcdPasswordSecret" -}}
{{- with .Values.etcd.auth.passwordSecret }}
name: {{ required "etcd.auth.passwordSecret.name" .name }}
key: {{ .key | default "password" }}
{{- else }}
{{- if include "quota.bundledEtcd" . }}
name: {{ printf "%s-center-password" (include "quota.etcdName" .) }}
key: password
generated: true
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret with the bundled etcd's root password, as YAML {name, key, generated}. */}}
{{- define "quota.etcdRootPasswordSecret" -}}
{{- with .Values.etcd.auth.rootPasswordSecret }}
name: {{ required "etcd.auth.rootPasswordSecret.name" .name }}
key: {{ .key | default "password" }}
{{- else }}
name: {{ printf "%s-root-password" (include "quota.etcdName" .) }}
key: password
generated: true
{{- end }}
{{- end }}

{{/* How the center reaches a secured etcd, as YAML: settings (the [center] keys), volumes and mounts. */}}
{{- define "quota.centerBackend" -}}
{{- $tls := .Values.etcd.tls }}
{{- $settings := dict }}
{{- $volumes := list }}
{{- $mounts := list }}
{{- $password := include "quota.etcdPasswordSecret" . | fromYaml }}
{{- if $password.name }}
{{- $_ := set $settings "etcd-user" (required "etcd.auth.user: the etcd user the center logs in as" .Values.etcd.auth.user) }}
{{- $_ := set $settings "etcd-password-file" "/etc/quota/etcd/password/password" }}
{{- $volumes = append $volumes (include "quota.secretVolume" (dict "name" "etcd-password" "secret" $password.name "items" (dict $password.key "password")) | fromYaml) }}
{{- $mounts = append $mounts (dict "name" "etcd-password" "mountPath" "/etc/quota/etcd/password" "readOnly" true) }}
{{- end }}
{{- if .Values.etcd.endpoints }}
{{- if and (or $tls.caSecret $tls.clientSecret) (not $tls.enabled) }}
{{- fail "etcd.tls: caSecret and clientSecret secure etcd over TLS; set etcd.tls.enabled=true too (etcds://)" }}
{{- end }}
{{- with $tls.caSecret }}
{{- $_ := set $settings "etcd-ca" "/etc/quota/etcd/ca/ca.crt" }}
{{- $volumes = append $volumes (include "quota.secretVolume" (dict "name" "etcd-ca" "secret" (required "etcd.tls.caSecret.name" .name) "items" (dict (.key | default "ca.crt") "ca.crt")) | fromYaml) }}
{{- $mounts = append $mounts (dict "name" "etcd-ca" "mountPath" "/etc/quota/etcd/ca" "readOnly" true) }}
{{- end }}
{{- with $tls.clientSecret }}
{{- $_ := set $settings "etcd-cert" "/etc/quota/etcd/client/tls.crt" }}
{{- $_ := set $settings "etcd-key" "/etc/quota/etcd/client/tls.key" }}
{{- $volumes = append $volumes (include "quota.secretVolume" (dict "name" "etcd-client" "secret" . "items" (dict "tls.crt" "tls.crt" "tls.key" "tls.key")) | fromYaml) }}
{{- $mounts = append $mounts (dict "name" "etcd-client" "mountPath" "/etc/quota/etcd/client" "readOnly" true) }}
{{- end }}
{{- else if or $tls.caSecret $tls.clientSecret }}
{{- fail "etcd.tls.caSecret and clientSecret apply to an existing etcd (etcd.endpoints): the bundled one's certificate is from the servers' CA, and the center presents its own" }}
{{- end }}
{{- dict "settings" $settings "volumes" $volumes "mounts" $mounts | toYaml }}
{{- end }}

{{/* A password Secret the chart generates once: (dict "root" $ "component" .. ["region" ..] "secret" YAML-of-
quota.*PasswordSecret "keep" BOOL). An upgrade keeps the password the Secret already holds (lookup; a renderer
without access to the cluster, such as `helm template`, makes a new one each time). */}}
{{- define "quota.passwordSecret" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret.name }}
{{- $password := "" }}
{{- if and $existing $existing.data (hasKey $existing.data .secret.key) }}
{{- $password = index $existing.data .secret.key }}
{{- else }}
{{- $password = randAlphaNum 32 | b64enc }}
{{- end }}
apiVersion: v1
kind: Secret
metadata:
  name: {{ .secret.name }}
  labels:
    {{- include "quota.labels" . | nindent 4 }}
  {{- if .keep }}
  annotations:
    # etcd keeps its users in its volumes, which outlive the release: so does their password.
    helm.sh/resource-policy: keep
  {{- end }}
type: Opaque
data:
  {{ .secret.key }}: {{ $password }}
{{- end }}
