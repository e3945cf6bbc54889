{{/*
The three containers of an agent's pod. Each process is configured only through the environment
variables of its settings class (docs/architecture.md); values that are null are left out so the
process's own default applies.
*/}}

{{/*
The LLM proxy: the only container with the API key.
*/}}
{{- define "agent.proxyContainer" -}}
{{- $p := "KUBEAGENTS_PROXY_" }}
{{- $env := dict
  (print $p "AGENT") (include "agent.agentName" .)
  (print $p "NAMESPACE") .Release.Namespace
  (print $p "HOST") "127.0.0.1"
  (print $p "PORT") (include "agent.port.proxy" .)
  (print $p "METRICS_HOST") "0.0.0.0"
  (print $p "METRICS_PORT") (include "agent.port.proxyAdmin" .)
  (print $p "UPSTREAM_URL") .Values.upstreamUrl
  (print $p "API_KEY_FILE") (printf "%s/%s" (include "agent.apiKeyDir" .) (include "agent.apiKeySecretKey" .))
  (print $p "ALLOWED_MODELS") (include "agent.allowedModels" .)
  (print $p "MAX_TOKENS_PER_CALL") .Values.limits.maxTokensPerCall
  (print $p "MAX_TOKENS_POLICY") .Values.limits.maxTokensPolicy
  (print $p "MAX_CONCURRENT_CALLS") .Values.limits.maxConcurrentCallsPerPod
  (print $p "MAX_CONCURRENT_CALLS_PER_AGENT") .Values.limits.maxConcurrentCallsPerAgent
  (print $p "REQUEST_TIMEOUT_SECONDS") .Values.limits.requestTimeoutSeconds
  (print $p "REQUESTS_PER_MINUTE") .Values.limits.requestsPerMinute
  (print $p "BUDGET_TOKENS_PER_DAY") .Values.budgets.tokensPerDay
  (print $p "BUDGET_USD_PER_DAY") .Values.budgets.usdPerDay
  (print $p "BUDGET_FAIL_OPEN") .Values.budgets.failOpen
  (print $p "ACCEPT_EVICTION_RISK") .Values.budgets.acceptEvictionRisk
  (print $p "DURABLE_REPLICAS") .Values.budgets.durableReplicas
  (print $p "DURABLE_TIMEOUT_MS") .Values.budgets.durableTimeoutMs
  (print $p "REDIS_CLUSTER") .Values.redis.cluster
  (print $p "PRICES") .Values.prices
  (print $p "CONCURRENCY_WAIT_SECONDS") .Values.proxy.concurrencyWaitSeconds
  (print $p "CONNECT_TIMEOUT_SECONDS") .Values.proxy.connectTimeoutSeconds
  (print $p "STREAM_IDLE_TIMEOUT_SECONDS") .Values.proxy.streamIdleTimeoutSeconds
  (print $p "UPSTREAM_MAX_RETRIES") .Values.proxy.upstreamMaxRetries
  (print $p "MAX_BODY_BYTES") .Values.proxy.maxBodyBytes
  (print $p "RESERVATION_GRACE_SECONDS") .Values.proxy.reservationGraceSeconds
  (print $p "ALLOWED_SERVER_TOOLS") .Values.proxy.allowedServerTools
  (print $p "ALLOWED_BETAS") .Values.proxy.allowedBetas
  (print $p "INFERENCE_GEO_MULTIPLIERS") .Values.proxy.inferenceGeoMultipliers
-}}
- name: proxy
  image: {{ include "agent.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.sidecars.native }}
  restartPolicy: Always
  {{- end }}
  command: ["kubeagents", "proxy"]
  {{- $envs := include "agent.envEntries" $env | fromJsonArray }}
  {{- $envs = append $envs (include "agent.redisUrlEntry" (dict "prefix" $p "root" .) | fromJson) }}
  env:
    {{- toYaml (concat $envs (include "agent.envEntries" .Values.otel | fromJsonArray)) | nindent 4 }}
    - name: KUBEAGENTS_LOG_LEVEL
      value: {{ .Values.logLevel | quote }}
  ports:
    - name: metrics
      containerPort: {{ include "agent.port.proxyAdmin" . }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /livez
      port: metrics
    periodSeconds: 1
    failureThreshold: 60
  livenessProbe:
    httpGet:
      path: /livez
      port: metrics
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 3
  {{- if not .Values.sidecars.native }}
  lifecycle:
    preStop:
      # an ordinary container gets SIGTERM together with the runtime: stay up while it drains
      {{- include "agent.waitForRuntime" . | nindent 6 }}
  {{- end }}
  resources:
    {{- toYaml .Values.resources.proxy | nindent 4 }}
  securityContext:
    {{- include "agent.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: api-key
      mountPath: {{ include "agent.apiKeyDir" . }}
      readOnly: true
    - name: tmp-proxy
      mountPath: /tmp
{{- end }}

{{/*
The semantic probe: its calls go through the proxy on loopback; it holds no key.
*/}}
{{- define "agent.probeContainer" -}}
{{- $p := "KUBEAGENTS_PROBE_" }}
{{- $env := dict
  (print $p "AGENT") (include "agent.agentName" .)
  (print $p "NAMESPACE") .Release.Namespace
  (print $p "HOST") "0.0.0.0"
  (print $p "PORT") (include "agent.port.probe" .)
  (print $p "PROXY_URL") (printf "http://127.0.0.1:%s" (include "agent.port.proxy" .))
  (print $p "PROXY_ADMIN_URL") (printf "http://127.0.0.1:%s" (include "agent.port.proxyAdmin" .))
  (print $p "MODEL") (include "agent.probeModel" .)
  (print $p "SYSTEM_PROMPT") .Values.probe.validator.systemPrompt
  (print $p "PROMPT") .Values.probe.validator.prompt
  (print $p "MAX_TOKENS") .Values.probe.validator.maxTokens
  (print $p "EXPECT") .Values.probe.expectation.kind
  (print $p "EXPECT_VALUE") .Values.probe.expectation.value
  (print $p "JUDGE_MODEL") (.Values.probe.expectation.judgeModel | default nil)
  (print $p "JUDGE_MAX_TOKENS") .Values.probe.expectation.judgeMaxTokens
  (print $p "INTERVAL_SECONDS") .Values.probe.intervalSeconds
  (print $p "JITTER_RATIO") .Values.probe.jitterRatio
  (print $p "TIMEOUT_SECONDS") .Values.probe.timeoutSeconds
  (print $p "FAILURE_THRESHOLD") .Values.probe.failureThreshold
  (print $p "SUCCESS_THRESHOLD") .Values.probe.successThreshold
  (print $p "VERDICT_TTL_SECONDS") .Values.probe.verdictTtlSeconds
  (print $p "STARTUP_GRACE_SECONDS") .Values.probe.startupGraceSeconds
  (print $p "SHARED") .Values.probe.shared
  (print $p "REDIS_CLUSTER") .Values.redis.cluster
  (print $p "PATH_INTERVAL_SECONDS") .Values.probe.pathIntervalSeconds
  (print $p "CHECK_KEY") .Values.probe.checkKey
  (print $p "CHECK_BUDGET") .Values.probe.checkBudget
  (print $p "CHECK_MCP") (and .Values.probe.checkMcpServers (ne (include "agent.mcpServers" .) "[]"))
  (print $p "RUNTIME_STATUS_URL") (printf "http://127.0.0.1:%s/status" (include "agent.port.runtime" .))
  (print $p "HISTORY") .Values.probe.history
-}}
- name: probe
  image: {{ include "agent.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.sidecars.native }}
  restartPolicy: Always
  {{- end }}
  command: ["kubeagents", "probe"]
  {{- $envs := list (include "agent.podNameEntry" $p | fromJson) }}
  {{- $envs = concat $envs (include "agent.envEntries" $env | fromJsonArray) }}
  {{- $envs = append $envs (include "agent.redisUrlEntry" (dict "prefix" $p "root" .) | fromJson) }}
  env:
    {{- toYaml (concat $envs (include "agent.envEntries" .Values.otel | fromJsonArray)) | nindent 4 }}
    - name: KUBEAGENTS_LOG_LEVEL
      value: {{ .Values.logLevel | quote }}
  ports:
    - name: probe
      containerPort: {{ include "agent.port.probe" . }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /livez
      port: probe
    periodSeconds: 1
    failureThreshold: 60
  livenessProbe:
    httpGet:
      path: /livez
      port: probe
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 3
  {{- if not .Values.sidecars.native }}
  lifecycle:
    preStop:
      {{- include "agent.waitForRuntime" . | nindent 6 }}
  {{- end }}
  resources:
    {{- toYaml .Values.resources.probe | nindent 4 }}
  securityContext:
    {{- include "agent.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: tmp-probe
      mountPath: /tmp
    {{- if .Values.probe.checkMcpServers }}
    {{- range include "agent.mcpSecretMounts" . | fromJsonArray }}
    {{- toYaml (list .) | nindent 4 }}
    {{- end }}
    {{- end }}
{{- end }}

{{/*
The agent runtime: no key; model calls go to the proxy on loopback, and it takes tasks only
while the probe's /readyz answers 200 (which is also its readiness probe).
*/}}
{{- define "agent.runtimeContainer" -}}
{{- $p := "KUBEAGENTS_RUNTIME_" }}
{{- $env := dict
  (print $p "AGENT") (include "agent.agentName" .)
  (print $p "NAMESPACE") .Release.Namespace
  (print $p "MODEL") .Values.model
  (print $p "SYSTEM_PROMPT_FILE") (printf "%s/%s" (include "agent.promptDir" .) (include "agent.promptFile" .))
  (print $p "MAX_TOKENS") .Values.limits.maxTokens
  (print $p "MCP_SERVERS") (include "agent.mcpServers" .)
  (print $p "TOOL_TIMEOUT_SECONDS") .Values.runtime.toolTimeoutSeconds
  (print $p "MAX_CONCURRENT_TASKS") .Values.limits.maxConcurrentTasks
  (print $p "TASK_TIMEOUT_SECONDS") .Values.limits.taskTimeoutSeconds
  (print $p "MAX_TURNS") .Values.limits.maxTurns
  (print $p "MAX_TASK_TOKENS") .Values.limits.maxTaskTokens
  (print $p "MAX_ATTEMPTS") .Values.runtime.maxAttempts
  (print $p "BACKOFF_BASE_SECONDS") .Values.runtime.backoffBaseSeconds
  (print $p "BACKOFF_MAX_SECONDS") .Values.runtime.backoffMaxSeconds
  (print $p "VISIBILITY_TIMEOUT_SECONDS") .Values.runtime.visibilityTimeoutSeconds
  (print $p "SHUTDOWN_GRACE_SECONDS") (include "agent.shutdownGraceSeconds" .)
  (print $p "PROXY_URL") (printf "http://127.0.0.1:%s" (include "agent.port.proxy" .))
  (print $p "READINESS_URL") (printf "http://127.0.0.1:%s/readyz" (include "agent.port.probe" .))
  (print $p "READINESS_POLL_SECONDS") .Values.runtime.readinessPollSeconds
  (print $p "REDIS_CLUSTER") .Values.redis.cluster
  (print $p "HOST") "0.0.0.0"
  (print $p "PORT") (include "agent.port.runtime" .)
  (print $p "TASK_API") .Values.runtime.taskApi
}}
{{- /* `kubectl exec … -c runtime -- kubeagents task submit …` finds the agent's queue */}}
{{- $task := dict
  "KUBEAGENTS_TASK_AGENT" (include "agent.agentName" .)
  "KUBEAGENTS_TASK_NAMESPACE" .Release.Namespace
  "KUBEAGENTS_TASK_REDIS_CLUSTER" .Values.redis.cluster
-}}
- name: runtime
  image: {{ include "agent.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["kubeagents", "runtime"]
  {{- $envs := list (include "agent.podNameEntry" $p | fromJson) }}
  {{- $envs = concat $envs (include "agent.envEntries" $env | fromJsonArray) }}
  {{- $envs = append $envs (include "agent.redisUrlEntry" (dict "prefix" $p "root" .) | fromJson) }}
  {{- $envs = concat $envs (include "agent.envEntries" $task | fromJsonArray) }}
  {{- $envs = append $envs (include "agent.redisUrlEntry" (dict "prefix" "KUBEAGENTS_TASK_" "root" .) | fromJson) }}
  env:
    {{- toYaml (concat $envs (include "agent.envEntries" .Values.otel | fromJsonArray)) | nindent 4 }}
    - name: KUBEAGENTS_LOG_LEVEL
      value: {{ .Values.logLevel | quote }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: http
      containerPort: {{ include "agent.port.runtime" . }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /livez
      port: http
    periodSeconds: 1
    failureThreshold: 60
  livenessProbe:
    httpGet:
      path: /livez
      port: http
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 3
  readinessProbe:
    # the probe sidecar's verdict: the model path answers the validator correctly
    httpGet:
      path: /readyz
      port: {{ include "agent.port.probe" . }}
    periodSeconds: 5
    timeoutSeconds: 3
    failureThreshold: 1
    successThreshold: 1
  resources:
    {{- toYaml .Values.resources.runtime | nindent 4 }}
  securityContext:
    {{- include "agent.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: prompt
      mountPath: {{ include "agent.promptDir" . }}
      readOnly: true
    - name: tmp-runtime
      mountPath: /tmp
    {{- range include "agent.mcpSecretMounts" . | fromJsonArray }}
    {{- toYaml (list .) | nindent 4 }}
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
preStop of the proxy and the probe as ordinary containers (sidecars.native: false): wait until the
runtime's port stops answering (it has drained and exited), at most its shutdown grace.
*/}}
{{- define "agent.waitForRuntime" -}}
{{- $seconds := include "agent.shutdownGraceSeconds" . | float64 | ceil | int }}
{{- $script := printf "import time, urllib.request\nfor _ in range(%d):\n    try:\n        urllib.request.urlopen('http://127.0.0.1:%s/livez', timeout=1)\n    except Exception:\n        break\n    time.sleep(1)\n" $seconds (include "agent.port.runtime" .) -}}
exec:
  command: {{ toJson (list "python3" "-c" $script) }}
{{- end }}
