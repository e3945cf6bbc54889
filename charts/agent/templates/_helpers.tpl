{{/*
Expand the name of the chart.
*/}}
{{- define "agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "agent.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "agent.labels" -}}
helm.sh/chart: {{ include "agent.chart" . }}
{{ include "agent.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeagents
app.kubernetes.io/component: agent
kubeagents.io/agent: {{ include "agent.agentName" . }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of the pod template: no chart version, so a chart-version bump does not roll the pods.
*/}}
{{- define "agent.podLabels" -}}
{{ include "agent.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeagents
app.kubernetes.io/component: agent
kubeagents.io/agent: {{ include "agent.agentName" . }}
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The agent's name (AGENT of every process): agentName, else the release's full name.
*/}}
{{- define "agent.agentName" -}}
{{- default (include "agent.fullname" .) .Values.agentName }}
{{- end }}

{{/*
The agent's task stream in Redis (docs/architecture.md).
*/}}
{{- define "agent.taskStream" -}}
{{- printf "kubeagents:{%s/%s}:tasks" .Release.Namespace (include "agent.agentName" .) }}
{{- end }}

{{- define "agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The ports of the pod: fixed by the contracts in docs/architecture.md.
*/}}
{{- define "agent.port.proxy" -}}8080{{- end }}
{{- define "agent.port.proxyAdmin" -}}9090{{- end }}
{{- define "agent.port.probe" -}}9091{{- end }}
{{- define "agent.port.runtime" -}}8081{{- end }}

{{/*
Where the API key and the prompt are mounted.
*/}}
{{- define "agent.apiKeyDir" -}}/etc/kubeagents/api-key{{- end }}
{{- define "agent.promptDir" -}}/etc/kubeagents/prompt{{- end }}
{{- define "agent.promptFile" -}}system-prompt.txt{{- end }}
{{- define "agent.mcpSecretsDir" -}}/etc/kubeagents/mcp{{- end }}

{{/*
The Secret and key holding the API key.
*/}}
{{- define "agent.apiKeySecretName" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecret }}
{{- else }}
{{- printf "%s-api-key" (include "agent.fullname" .) }}
{{- end }}
{{- end }}

{{- define "agent.apiKeySecretKey" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecretKey }}
{{- else }}
{{- "api-key" }}
{{- end }}
{{- end }}

{{/*
The models the proxy lets through.
*/}}
{{- define "agent.allowedModels" -}}
{{- if .Values.allowedModels }}
{{- toJson (uniq .Values.allowedModels) }}
{{- else }}
{{- toJson (list .Values.model) }}
{{- end }}
{{- end }}

{{- define "agent.probeModel" -}}
{{- default .Values.model .Values.probe.validator.model }}
{{- end }}

{{/*
The runtime's shutdown grace: runtime.shutdownGraceSeconds, else the task timeout.
*/}}
{{- define "agent.shutdownGraceSeconds" -}}
{{- if kindIs "invalid" .Values.runtime.shutdownGraceSeconds }}
{{- toJson .Values.limits.taskTimeoutSeconds }}
{{- else }}
{{- toJson .Values.runtime.shutdownGraceSeconds }}
{{- end }}
{{- end }}

{{- define "agent.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (ceil (include "agent.shutdownGraceSeconds" . | float64)) 30 }}
{{- else }}
{{- toJson .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The MCP servers as the JSON list KUBEAGENTS_*_MCP_SERVERS take (kubeagents/mcp/config.py).
A header from a Secret (headerSecrets) becomes a headerFiles entry pointing at its mounted file.
*/}}
{{/*
The MCP servers of `mcpServers` that are not turned off (`enabled: false`, which lets a values
file drop a server that another values file defined), as a JSON object.
*/}}
{{- define "agent.enabledMcpServers" -}}
{{- $enabled := dict }}
{{- range $name, $server := .Values.mcpServers }}
{{- if ne $server.enabled false }}{{ $_ := set $enabled $name (omit $server "enabled") }}{{ end }}
{{- end }}
{{- toJson $enabled }}
{{- end }}

{{- define "agent.mcpServers" -}}
{{- $servers := list }}
{{- range $name, $server := include "agent.enabledMcpServers" . | fromJson }}
{{- $out := dict "name" $name "transport" $server.transport }}
{{- if eq $server.transport "http" }}
{{- $_ := set $out "url" $server.url }}
{{- with $server.headers }}{{ $_ := set $out "headers" . }}{{ end }}
{{- $files := dict }}
{{- range $header, $ref := $server.headerSecrets }}
{{- $_ := set $files $header (printf "%s/%s/%s" (include "agent.mcpSecretsDir" $) $name (lower $header)) }}
{{- end }}
{{- with $files }}{{ $_ := set $out "headerFiles" . }}{{ end }}
{{- else }}
{{- $_ := set $out "command" $server.command }}
{{- with $server.env }}{{ $_ := set $out "env" . }}{{ end }}
{{- end }}
{{- if hasKey $server "tools" }}{{ $_ := set $out "tools" $server.tools }}{{ end }}
{{- if hasKey $server "timeoutSeconds" }}{{ $_ := set $out "timeoutSeconds" $server.timeoutSeconds }}{{ end }}
{{- $servers = append $servers $out }}
{{- end }}
{{- toJson $servers }}
{{- end }}

{{/*
Volumes and mounts of the Secrets behind MCP servers' headerSecrets (runtime and probe), as JSON lists.
*/}}
{{- define "agent.mcpSecretVolumes" -}}
{{- $volumes := list }}
{{- range $name, $server := include "agent.enabledMcpServers" . | fromJson }}
{{- if $server.headerSecrets }}
{{- $sources := list }}
{{- range $header, $ref := $server.headerSecrets }}
{{- $item := dict "key" $ref.key "path" (lower $header) }}
{{- $sources = append $sources (dict "secret" (dict "name" $ref.name "items" (list $item))) }}
{{- end }}
{{- $volumes = append $volumes (dict "name" (printf "mcp-%s" $name) "projected" (dict "defaultMode" 288 "sources" $sources)) }}
{{- end }}
{{- end }}
{{- toJson $volumes }}
{{- end }}

{{- define "agent.mcpSecretMounts" -}}
{{- $mounts := list }}
{{- range $name, $server := include "agent.enabledMcpServers" . | fromJson }}
{{- if $server.headerSecrets }}
{{- $mounts = append $mounts (dict "name" (printf "mcp-%s" $name) "mountPath" (printf "%s/%s" (include "agent.mcpSecretsDir" $) $name) "readOnly" true) }}
{{- end }}
{{- end }}
{{- toJson $mounts }}
{{- end }}

{{/*
An env value as the text a settings class parses: strings as they are, everything else as JSON
(numbers without exponent, booleans as true/false, lists and maps as JSON).
*/}}
{{- define "agent.envValue" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
A dict name -> value as a JSON env list, sorted by name; null values are left out.
*/}}
{{- define "agent.envEntries" -}}
{{- $entries := list }}
{{- range $name, $value := . }}
{{- if not (kindIs "invalid" $value) }}
{{- $entries = append $entries (dict "name" $name "value" (include "agent.envValue" $value)) }}
{{- end }}
{{- end }}
{{- toJson $entries }}
{{- end }}

{{/*
The Redis URL env entry (JSON) of a process (env prefix given): from the Secret, or the value.
*/}}
{{- define "agent.redisUrlEntry" -}}
{{- $name := printf "%sREDIS_URL" .prefix }}
{{- if not .root.Values.redis.url }}
{{- toJson (dict "name" $name "valueFrom" (dict "secretKeyRef" (dict "name" .root.Values.redis.existingSecret "key" .root.Values.redis.existingSecretKey))) }}
{{- else }}
{{- toJson (dict "name" $name "value" .root.Values.redis.url) }}
{{- end }}
{{- end }}

{{/*
The pod's name from the downward API (JSON env entry), for the prefix given.
*/}}
{{- define "agent.podNameEntry" -}}
{{- toJson (dict "name" (printf "%sPOD_NAME" .) "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.name"))) }}
{{- end }}

{{/*
The non-secret data of the release's ConfigMap: the system prompt. The pods' checksum annotation
hashes exactly this.
*/}}
{{- define "agent.configData" -}}
{{- dict (include "agent.promptFile" .) .Values.systemPrompt | toYaml }}
{{- end }}

{{/*
Security context of every container.
*/}}
{{- define "agent.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/*
Consistency checks the schema cannot express; each names the values it is about.
*/}}
{{- define "agent.validate" -}}
{{- if and .Values.apiKey.existingSecret .Values.apiKey.value }}
{{- fail "apiKey: set apiKey.existingSecret or apiKey.value, not both" }}
{{- end }}
{{- if not (or .Values.apiKey.existingSecret .Values.apiKey.value) }}
{{- fail "apiKey: set apiKey.existingSecret (an existing Secret holding the provider API key, recommended) or apiKey.value" }}
{{- end }}
{{- if and .Values.systemPrompt .Values.existingPromptConfigMap }}
{{- fail "systemPrompt: set systemPrompt or existingPromptConfigMap, not both (set systemPrompt to \"\")" }}
{{- end }}
{{- if not (or .Values.redis.url .Values.redis.existingSecret) }}
{{- fail "redis: set redis.url or redis.existingSecret (the agent's queue and budgets live in Redis)" }}
{{- end }}
{{- $allowed := include "agent.allowedModels" . | fromJsonArray }}
{{- if not (has .Values.model $allowed) }}
{{- fail (printf "allowedModels: must contain model %q" .Values.model) }}
{{- end }}
{{- if not (has (include "agent.probeModel" .) $allowed) }}
{{- fail (printf "probe.validator.model: %q is not in allowedModels %s; the proxy would refuse the probe's calls" (include "agent.probeModel" .) (toJson $allowed)) }}
{{- end }}
{{- with .Values.probe.expectation.judgeModel }}
{{- if not (has . $allowed) }}
{{- fail (printf "probe.expectation.judgeModel: %q is not in allowedModels %s" . (toJson $allowed)) }}
{{- end }}
{{- end }}
{{- if and (not (kindIs "invalid" .Values.probe.verdictTtlSeconds)) (le (float64 .Values.probe.verdictTtlSeconds) (float64 .Values.probe.intervalSeconds)) }}
{{- fail "probe.verdictTtlSeconds: must be longer than probe.intervalSeconds" }}
{{- end }}
{{- if lt (float64 .Values.runtime.backoffMaxSeconds) (float64 .Values.runtime.backoffBaseSeconds) }}
{{- fail "runtime.backoffMaxSeconds: must be at least runtime.backoffBaseSeconds" }}
{{- end }}
{{- if and .Values.redis.cluster .Values.redis.url }}
{{- $path := trimPrefix "/" (urlParse .Values.redis.url).path }}
{{- if and $path (ne $path "0") }}
{{- fail "redis.url: a Redis Cluster has no databases; drop the /<db> part" }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (eq .Values.autoscaling.type "keda") (not .Values.redis.url) (not .Values.autoscaling.keda.address) }}
{{- fail "autoscaling.keda.address: required when the Redis URL comes from redis.existingSecret (KEDA needs host:port)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas: must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
