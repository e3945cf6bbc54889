{{/*
The chart's name.
*/}}
{{- define "kubeagents.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name, the prefix of every object's name. Truncated at 63 characters (DNS label); the
release name alone when it already contains the chart name.
*/}}
{{- define "kubeagents.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "kubeagents.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels of every object.
*/}}
{{- define "kubeagents.labels" -}}
helm.sh/chart: {{ include "kubeagents.chart" . }}
{{ include "kubeagents.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeagents
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: name and instance only, so they never change on upgrade.
*/}}
{{- define "kubeagents.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeagents.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Redis: the StatefulSet's name. At most 52 characters: the StatefulSet controller labels every
pod with `controller-revision-hash: <name>-<10 characters>`, which must fit in 63.
*/}}
{{- define "kubeagents.redis.fullname" -}}
{{- printf "%s-redis" (include "kubeagents.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "kubeagents.redis.headlessName" -}}
{{- printf "%s-headless" (include "kubeagents.redis.fullname" .) }}
{{- end }}

{{- define "kubeagents.redis.labels" -}}
{{ include "kubeagents.labels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "kubeagents.redis.selectorLabels" -}}
{{ include "kubeagents.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "kubeagents.redis.serviceAccountName" -}}
{{- $sa := .Values.redis.statefulset.serviceAccount }}
{{- if $sa.create }}
{{- default (include "kubeagents.redis.fullname" .) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{- define "kubeagents.redis.image" -}}
{{- $image := .Values.redis.statefulset.image }}
{{- $repository := $image.repository }}
{{- if $image.registry }}
{{- $repository = printf "%s/%s" $image.registry $image.repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository $image.tag }}
{{- end }}
{{- end }}

{{/*
The Secret holding the password of the chart's Redis, and its key.
*/}}
{{- define "kubeagents.redis.passwordSecretName" -}}
{{- default (printf "%s-password" (include "kubeagents.redis.fullname" .)) .Values.redis.auth.existingSecret }}
{{- end }}

{{- define "kubeagents.redis.passwordSecretKey" -}}
{{- if .Values.redis.auth.existingSecret }}
{{- .Values.redis.auth.existingSecretPasswordKey }}
{{- else -}}
redis-password
{{- end }}
{{- end }}

{{/*
Host names of the chart's Redis: the client Service (always pod 0, the master) and pod 0 itself.
*/}}
{{- define "kubeagents.redis.host" -}}
{{- printf "%s.%s.svc.%s" (include "kubeagents.redis.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "kubeagents.redis.masterHost" -}}
{{- printf "%s-0.%s.%s.svc.%s" (include "kubeagents.redis.fullname" .) (include "kubeagents.redis.headlessName" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/*
The connection Secret agents read the Redis URL from (their `redis.existingSecret`), and its key:
the user's Secret when one is given, otherwise `<fullname>-redis-url` rendered by this chart.
*/}}
{{- define "kubeagents.redis.urlSecretRendered" -}}
{{- if eq .Values.redis.mode "statefulset" }}
{{- if not .Values.redis.auth.existingSecret }}true{{ end }}
{{- else if not .Values.redis.external.existingSecret }}true{{ end }}
{{- end }}

{{- define "kubeagents.redis.urlSecretName" -}}
{{- if include "kubeagents.redis.urlSecretRendered" . }}
{{- printf "%s-redis-url" (include "kubeagents.fullname" .) }}
{{- else if eq .Values.redis.mode "statefulset" }}
{{- .Values.redis.auth.existingSecret }}
{{- else }}
{{- .Values.redis.external.existingSecret }}
{{- end }}
{{- end }}

{{- define "kubeagents.redis.urlSecretKey" -}}
{{- if include "kubeagents.redis.urlSecretRendered" . -}}
redis-url
{{- else if eq .Values.redis.mode "statefulset" }}
{{- .Values.redis.auth.existingSecretUrlKey }}
{{- else }}
{{- .Values.redis.external.existingSecretKey }}
{{- end }}
{{- end }}

{{/*
"true" when the agents' Redis is a Redis Cluster (their `redis.cluster` value).
*/}}
{{- define "kubeagents.redis.cluster" -}}
{{- and (eq .Values.redis.mode "external") (eq .Values.redis.external.topology "cluster") }}
{{- end }}

{{/*
The team-run operator: its objects' name (Deployment, ServiceAccount, Roles, the Lease), labels
and image.
*/}}
{{- define "kubeagents.operator.fullname" -}}
{{- printf "%s-operator" (include "kubeagents.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the cluster-wide objects (ClusterRole, ClusterRoleBinding): with the release's namespace,
so that releases of the same name in two namespaces do not collide.
*/}}
{{- define "kubeagents.operator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "kubeagents.operator.fullname" .) }}
{{- end }}

{{- define "kubeagents.operator.leaderElectionName" -}}
{{- printf "%s-leader-election" (include "kubeagents.operator.fullname" .) }}
{{- end }}

{{- define "kubeagents.operator.labels" -}}
{{ include "kubeagents.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubeagents.operator.selectorLabels" -}}
{{ include "kubeagents.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubeagents.operator.serviceAccountName" -}}
{{- $sa := .Values.operator.serviceAccount }}
{{- if $sa.create }}
{{- default (include "kubeagents.operator.fullname" .) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{- define "kubeagents.operator.image" -}}
{{- $image := .Values.operator.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
The port of the operator's /livez, /readyz and /metrics (docs/architecture.md).
*/}}
{{- define "kubeagents.operator.port" -}}9092{{- end }}

{{/*
What the operator may do in the namespaces it drives: the rules of its ClusterRole, or of the Role
in each of `operator.watchNamespaces`. docs: charts/kubeagents/README.md, "The operator".
*/}}
{{- define "kubeagents.operator.rules" -}}
# kopf lists and watches the teams and runs, keeps its progress in annotations and its
# finalizers (patch); the operator reads a run by name (get)
- apiGroups: [kubeagents.io]
  resources: [agentteams, agentruns]
  verbs: [get, list, watch, patch]
# schedules create runs and prune the run history
- apiGroups: [kubeagents.io]
  resources: [agentruns]
  verbs: [create, delete]
# the status of teams (Valid, steps) and runs (phase, steps, usage, conditions)
- apiGroups: [kubeagents.io]
  resources: [agentteams/status, agentruns/status]
  verbs: [get, patch, update]
# Events of step transitions and of kopf's handlers
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# read-only: which agents of a team have no Ready pod (it never creates or scales them)
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch]
{{- end }}

{{- define "kubeagents.operator.subjects" -}}
- kind: ServiceAccount
  name: {{ include "kubeagents.operator.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
