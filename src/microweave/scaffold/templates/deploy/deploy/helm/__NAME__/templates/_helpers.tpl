{{/*
The objects' name: the release name, or "<release>-<chart>" unless the release name already
holds the chart's (so `helm install __NAME__ .` names them __NAME__, as deploy/k8s does).
*/}}
{{- define "__NAME__.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* What the Service and the Deployment select pods by. */}}
{{- define "__NAME__.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Every object's labels. */}}
{{- define "__NAME__.labels" -}}
{{ include "__NAME__.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* Seconds between SIGTERM's preStop and SIGKILL: preStop + drain grace + margin. */}}
{{- define "__NAME__.terminationGracePeriodSeconds" -}}
{{- addf .Values.preStopSeconds .Values.grace .Values.terminationMarginSeconds | ceil | int }}
{{- end }}
