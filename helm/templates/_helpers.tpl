{{/*
Names, labels and the small pieces every template of the suite shares. A "service context" is a
dict with the root context (`root`), the service's key in `.Values.services` (`name`) and its
values merged over `.Values.serviceDefaults` (`svc`).
*/}}

{{- define "complaints.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-wide prefix of every object name. */}}
{{- define "complaints.fullname" -}}
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

{{- define "complaints.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object (root context). */}}
{{- define "complaints.labels" -}}
helm.sh/chart: {{ include "complaints.chart" . }}
app.kubernetes.io/name: {{ include "complaints.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: complaints
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector of one component: a service name, or "migration", "database-bootstrap", ... */}}
{{- define "complaints.selectorLabels" -}}
app.kubernetes.io/name: {{ include "complaints.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Full labels of one component: (dict "root" $ "component" "intake") */}}
{{- define "complaints.componentLabels" -}}
{{ include "complaints.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Object name of one service's resources: <fullname>-<service>. */}}
{{- define "complaints.serviceFullname" -}}
{{- printf "%s-%s" (include "complaints.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "complaints.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Secret holding DATABASE_URL (and `password`) of one service. */}}
{{- define "complaints.databaseSecretName" -}}
{{- if .svc.database.existingSecret }}
{{- .svc.database.existingSecret }}
{{- else }}
{{- printf "%s-db" (include "complaints.serviceFullname" .) }}
{{- end }}
{{- end }}

{{- define "complaints.databaseHost" -}}
{{- if .Values.database.host }}
{{- .Values.database.host }}
{{- else if .Values.postgresql.enabled }}
{{- printf "%s-postgresql" (include "complaints.fullname" .) }}
{{- else }}
{{- fail "database.host is required when postgresql.enabled is false" }}
{{- end }}
{{- end }}

{{- define "complaints.databaseAdminSecretName" -}}
{{- .Values.database.bootstrap.existingSecret | default (printf "%s-db-admin" (include "complaints.fullname" .)) }}
{{- end }}

{{- define "complaints.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "complaints.fullname" .)) }}
{{- end }}

{{- define "complaints.surveySecretName" -}}
{{- .Values.survey.existingSecret | default (printf "%s-survey" (include "complaints.fullname" .)) }}
{{- end }}

{{/*
A password that stays the same across upgrades: the value given, else the one already in the
Secret (lookup; empty when rendering offline), else a new random one.
(dict "root" $ "secret" "<name>" "key" "password" "value" "<given>")
*/}}
{{- define "complaints.stablePassword" -}}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Hook annotations: (dict "hook" "pre-install,pre-upgrade" "weight" "-10" "delete" "before-hook-creation") */}}
{{- define "complaints.hookAnnotations" -}}
helm.sh/hook: {{ .hook }}
helm.sh/hook-weight: {{ .weight | quote }}
{{- if .delete }}
helm.sh/hook-delete-policy: {{ .delete }}
{{- end }}
{{- end }}

{{- define "complaints.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "complaints.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* NetworkPolicy egress rules every pod of the suite needs: DNS and PostgreSQL. */}}
{{- define "complaints.egressDnsAndDatabase" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns.peers | nindent 4 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
- to:
    {{- if .Values.postgresql.enabled }}
    - podSelector:
        matchLabels:
          {{- include "complaints.selectorLabels" (dict "root" . "component" "dev-postgresql") | nindent 10 }}
    {{- end }}
    {{- with .Values.networkPolicy.database.peers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - protocol: TCP
      port: {{ .Values.database.port }}
{{- end }}

{{/* The environment of a service's container, shared by its Deployment and its migration Job
(the binaries read their whole configuration before `migrate` too). Service context. */}}
{{- define "complaints.serviceEnv" -}}
{{- $root := .root }}
{{- $svc := .svc }}
{{- $name := .name }}
{{- $ctx := . }}
{{- $objname := include "complaints.serviceFullname" . }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "complaints.databaseSecretName" $ctx }}
      key: DATABASE_URL
- name: GRPC_LISTEN_ADDR
  value: "0.0.0.0:{{ $root.Values.ports.grpc }}"
- name: METRICS_LISTEN_ADDR
  value: "0.0.0.0:{{ $root.Values.ports.metrics }}"
- name: DB_POOL_MAX_CONNECTIONS
  value: {{ $svc.dbPoolMaxConnections | quote }}
- name: SHUTDOWN_GRACE
  value: "{{ $root.Values.config.shutdownGraceSeconds }}s"
- name: RUST_LOG
  value: {{ $root.Values.config.logLevel | quote }}
- name: LOG_FORMAT
  value: {{ $root.Values.config.logFormat | quote }}
- name: ORG_TIMEZONE
  value: {{ $root.Values.config.orgTimezone | quote }}
- name: JWT_ISSUER
  value: {{ $root.Values.auth.issuer | quote }}
- name: JWT_AUDIENCE
  value: {{ $root.Values.auth.audience | quote }}
{{- if include "complaints.hs256" $root }}
- name: JWT_HS256_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "complaints.authSecretName" $root }}
      key: hs256-secret
{{- else }}
- name: JWT_ALGORITHM
  value: {{ $root.Values.auth.algorithm | quote }}
- name: JWT_PUBLIC_KEY_FILE
  value: /etc/complaints/auth/public.pem
- name: SERVICE_TOKEN_FILE
  value: /etc/complaints/auth/service-token
{{- end }}
{{- range $upstream := $svc.upstreams }}
{{- $up := index $root.Values.services $upstream }}
- name: {{ $up.urlEnv }}
  value: "http://{{ include "complaints.serviceFullname" (dict "root" $root "name" $upstream) }}.{{ $root.Release.Namespace }}.svc:{{ $root.Values.ports.grpc }}"
{{- end }}
{{- if eq $name "feedback-survey" }}
- name: SURVEY_TOKEN_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "complaints.surveySecretName" $root }}
      key: token-secret
{{- end }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: OTEL_SERVICE_NAME
  value: {{ $name }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "service.namespace=complaints,service.version={{ $root.Values.image.tag | default $root.Chart.AppVersion }},k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME),k8s.node.name=$(NODE_NAME),k8s.deployment.name={{ $objname }}{{ with $root.Values.otel.resourceAttributes }},{{ . }}{{ end }}"
{{- with $root.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: grpc
{{- end }}
{{- range $key, $value := $svc.env }}
- name: {{ $key }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with $root.Values.config.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* "true" when tokens are verified with the development HS256 secret. */}}
{{- define "complaints.hs256" -}}
{{- if and (not .Values.auth.existingSecret) (not .Values.auth.publicKey) }}true{{ end }}
{{- end }}

{{- define "complaints.authVolumeMount" -}}
{{- if not (include "complaints.hs256" .) }}
- name: auth
  mountPath: /etc/complaints/auth
  readOnly: true
{{- end }}
{{- end }}

{{- define "complaints.authVolume" -}}
{{- if not (include "complaints.hs256" .) }}
- name: auth
  secret:
    secretName: {{ include "complaints.authSecretName" . }}
    defaultMode: 0440
    items:
      - key: public.pem
        path: public.pem
      - key: service-token
        path: service-token
{{- end }}
{{- end }}
