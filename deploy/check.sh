#!/usr/bin/env bash
# Validates everything in deploy/ with the tools that understand it. Run by .ci/run;
# needs nginx, promtool (Debian `prometheus`) and a Python with kubernetes-validate and
# yamllint (PY, default python3).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "-- nginx -t (site config with a generated upstream include)"
printf '# qembed-rollout active colour: blue\nupstream qembed_active { server 127.0.0.1:30001 max_fails=0; keepalive 32; }\n' > "$tmp/active.conf"
sed "s|listen 8080;|listen 127.0.0.1:18080;|" nginx/qembed-site.conf > "$tmp/qembed-site.conf"
cat > "$tmp/nginx.conf" <<CONF
pid $tmp/nginx.pid;
error_log $tmp/error.log;
events {}
http {
  client_body_temp_path $tmp/body;
  proxy_temp_path $tmp/proxy;
  include $tmp/active.conf;
  include $tmp/qembed-site.conf;
}
CONF
nginx -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/error.log" -t

echo "-- promtool"
promtool check config prometheus/prometheus.yml
promtool check rules prometheus/qembed-alerts.yml
(cd prometheus && promtool test rules qembed-alerts.test.yml)

echo "-- yamllint"
"$PY" -m yamllint -d '{extends: relaxed, rules: {line-length: disable}}' k8s prometheus

echo "-- kubernetes-validate (core kinds against the Kubernetes schemas)"
"$PY" -m kubernetes_validate --strict k8s/qembed-blue.yaml k8s/qembed-green.yaml k8s/service.yaml k8s/rollout-config.yaml

echo "-- Argo Rollouts manifests: parse, and name the services and templates they use"
"$PY" - <<'PYCHECK'
import yaml
docs = [d for f in ("k8s/argo-rollout.yaml", "k8s/analysis-templates.yaml") for d in yaml.safe_load_all(open(f))]
kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
rollout = next(d for d in docs if d["kind"] == "Rollout")
bg = rollout["spec"]["strategy"]["blueGreen"]
for svc in (bg["activeService"], bg["previewService"]):
    assert ("Service", svc) in kinds, svc
for phase in ("prePromotionAnalysis", "postPromotionAnalysis"):
    for t in bg[phase]["templates"]:
        assert ("AnalysisTemplate", t["templateName"]) in kinds, t
print("argo manifests consistent:", sorted(kinds))
PYCHECK

echo "-- the reranker golden set example is make-rerank-golden.py's output for its fixture"
"$PY" golden/make-rerank-golden.py --from-reference ../models/qwen3-rerank-head/reference.json \
  | diff - golden/rerank.example.jsonl

echo "-- grafana dashboard and rollout example parse"
"$PY" -c "import json; d=json.load(open('grafana/qembed-dashboard.json')); assert d['panels']"
"$PY" -c "import tomllib; tomllib.load(open('rollout.example.toml','rb'))"
echo "deploy/ checks passed"
