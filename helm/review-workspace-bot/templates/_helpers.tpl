{{/* Names and labels. */}}
{{- define "rwbot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rwbot.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "rwbot.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "rwbot.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "rwbot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rwbot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rwbot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "rwbot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "rwbot.serviceAccountName" -}}
{{- default (include "rwbot.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "rwbot.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Values the schema cannot check; the bot would refuse them at start and the
pods would crash-loop, so the install fails instead. */}}
{{- define "rwbot.validate" -}}
{{- with .Values.endpoints.domain }}
{{- $domain := lower (trimSuffix "." .) }}
{{- $host := lower (urlParse $.Values.publicUrl).hostname }}
{{- if or (eq $host $domain) (hasSuffix (printf ".%s" $domain) $host) }}
{{- fail (printf "endpoints.domain %s holds the bot's own host %s (publicUrl): endpoints serve merge requests' code, which must not share the bot's site; use a domain of its own" $domain $host) }}
{{- end }}
{{- end }}
{{- end }}

{{/* SQLite on a volume unless a PostgreSQL URL (or Secret holding one) is given. */}}
{{- define "rwbot.sqlite" -}}
{{- if and (not .Values.database.url) (not .Values.database.existingSecret) }}true{{ end }}
{{- end }}

{{/* Secrets the bot reads from files: values key -> variable name and file. */}}
{{- define "rwbot.secretFiles" -}}
gitlabToken: {env: GITLAB_TOKEN, file: gitlab-token}
webhookSecret: {env: WEBHOOK_SECRET, file: webhook-secret}
webhookSigningSecret: {env: WEBHOOK_SIGNING_SECRET, file: webhook-signing-secret}
oauthClientId: {env: OAUTH_CLIENT_ID, file: oauth-client-id}
oauthClientSecret: {env: OAUTH_CLIENT_SECRET, file: oauth-client-secret}
sessionSecret: {env: SESSION_SECRET, file: session-secret}
{{- end }}

{{/* Whether a secret is available: given, in an existing Secret, or generated. */}}
{{- define "rwbot.hasSecret" -}}
{{- $s := index .root.Values.secrets .name }}
{{- if or $s.value $s.existingSecret (eq .name "sessionSecret") }}true{{ end }}
{{- end }}

{{/* Pod-level security: not root, no privilege, default seccomp. */}}
{{- define "rwbot.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "rwbot.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Environment shared by web and worker. */}}
{{- define "rwbot.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "rwbot.fullname" . }}
env:
  {{- range $name, $f := fromYaml (include "rwbot.secretFiles" .) }}
  {{- if include "rwbot.hasSecret" (dict "root" $ "name" $name) }}
  - name: RWBOT_{{ $f.env }}_FILE
    value: /run/secrets/rwbot/{{ $f.file }}
  {{- end }}
  {{- end }}
  {{- if not (include "rwbot.sqlite" .) }}
  - name: RWBOT_DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ default (include "rwbot.fullname" .) .Values.database.existingSecret }}
        key: {{ .Values.database.key }}
  {{- end }}
{{- end }}

{{- define "rwbot.volumeMounts" -}}
volumeMounts:
  - name: secrets
    mountPath: /run/secrets/rwbot
    readOnly: true
  - name: tmp
    mountPath: /tmp
  {{- if include "rwbot.sqlite" . }}
  - name: data
    mountPath: /data
  {{- end }}
  {{- if .Values.workspaces.templatesConfigMap }}
  - name: workspace-templates
    mountPath: /etc/rwbot/templates
    readOnly: true
  {{- end }}
{{- end }}

{{- define "rwbot.volumes" -}}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 256Mi
  - name: secrets
    projected:
      defaultMode: 0440
      sources:
        {{- range $name, $f := fromYaml (include "rwbot.secretFiles" .) }}
        {{- $s := index $.Values.secrets $name }}
        {{- if include "rwbot.hasSecret" (dict "root" $ "name" $name) }}
        - secret:
            name: {{ default (include "rwbot.fullname" $) $s.existingSecret }}
            items:
              - key: {{ ternary $s.key $f.file (not (empty $s.existingSecret)) }}
                path: {{ $f.file }}
        {{- end }}
        {{- end }}
  {{- if include "rwbot.sqlite" . }}
  - name: data
    persistentVolumeClaim:
      claimName: {{ include "rwbot.fullname" . }}-data
  {{- end }}
  {{- with .Values.workspaces.templatesConfigMap }}
  - name: workspace-templates
    configMap:
      name: {{ . }}
  {{- end }}
{{- end }}

{{- define "rwbot.webContainer" -}}
name: web
image: {{ include "rwbot.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- /* The image's own command (gunicorn, no control socket: this user has no
home); only the tunable settings change, through gunicorn's variable. */}}
ports:
  - name: http
    containerPort: {{ .Values.web.port }}
    protocol: TCP
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 10
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  initialDelaySeconds: 10
  periodSeconds: 20
{{ include "rwbot.env" . }}
  - name: GUNICORN_CMD_ARGS
    value: {{ printf "--bind=0.0.0.0:%v --workers=%v --threads=%v --access-logfile=-" .Values.web.port .Values.web.gunicorn.workers .Values.web.gunicorn.threads | quote }}
{{ include "rwbot.volumeMounts" . }}
securityContext:
  {{- include "rwbot.containerSecurityContext" . | nindent 2 }}
resources:
  {{- toYaml .Values.web.resources | nindent 2 }}
{{- end }}

{{- define "rwbot.workerContainer" -}}
name: worker
image: {{ include "rwbot.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
command: ["rwbot", "worker"]
{{ include "rwbot.env" . }}
{{ include "rwbot.volumeMounts" . }}
securityContext:
  {{- include "rwbot.containerSecurityContext" . | nindent 2 }}
resources:
  {{- toYaml .Values.worker.resources | nindent 2 }}
{{- end }}

{{/* Pod spec fields shared by every Deployment. */}}
{{- define "rwbot.podCommon" -}}
serviceAccountName: {{ include "rwbot.serviceAccountName" . }}
securityContext:
  {{- include "rwbot.podSecurityContext" . | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{ include "rwbot.volumes" . }}
{{- end }}

{{/* Pod metadata; call with (dict "root" $ "component" "web" "http" true). */}}
{{- define "rwbot.podMetadata" -}}
annotations:
  checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
  checksum/secret: {{ include (print .root.Template.BasePath "/secret.yaml") .root | sha256sum }}
  {{- with .root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
labels:
  {{- include "rwbot.labels" .root | nindent 2 }}
  app.kubernetes.io/component: {{ .component }}
  {{- if .http }}
  review-workspace-bot/http: "true"
  {{- end }}
  {{- with .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
