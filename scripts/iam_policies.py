#!/usr/bin/env python3
"""Prints the job roles' IAM policies of batch/facegroup-batch.yaml, resolved, as JSON.

Why: the IAM-enforced tests must run the workers under the policies the stack really deploys,
read from the template itself (parsed, never copied), so a policy change that breaks a worker
fails a test instead of a production job. Needs only PyYAML (in .venv through moto).

Usage:
    .venv/bin/python scripts/iam_policies.py [--template PATH] [--account-id ID]
        [--region REGION] [--partition PARTITION] [--role LOGICAL_ID ...]
        [--param NAME=VALUE ...] [--queue LOGICAL_ID=URL ...]
        [--ref LOGICAL_ID=VALUE ...] [--attr LOGICAL_ID.ATTRIBUTE=VALUE ...] [--moto]

    --template    default batch/facegroup-batch.yaml (relative to the repository root)
    --account-id  default 123456789012 (moto's default account); --region default us-east-1;
                  --partition default aws (AWS::URLSuffix follows: amazonaws.com, or
                  amazonaws.com.cn for aws-cn)
    --role        roles to print, default DetectionJobRole GroupingJobRole ScalerJobRole
    --param       a template parameter, e.g. --param BucketName=facegroup-test; parameters
                  without one take the template's Default (BucketName has none: required)
    --queue       an AWS::SQS::Queue as the test created it, by its URL (moto's
                  http://localhost:PORT/123456789012/NAME works): sets the queue's Ref (the URL),
                  Arn (arn:PARTITION:sqs:REGION:ACCOUNT:NAME) and QueueName (NAME). A queue not
                  given keeps its template QueueName, with a real-AWS-style URL.
    --ref/--attr  override what !Ref / !GetAtt of any resource resolves to. Defaults exist for
                  queues (above), Batch job queues (job-queue ARN from JobQueueName), IAM roles
                  (their logical id) and KMS keys (a key ARN with a fixed fake id).
    --moto        print the documents rewritten for moto 5.2.5's enforcement (below): add
                  sqs:DeleteMessageBatch / ChangeMessageVisibilityBatch / SendMessageBatch beside
                  their single actions, lower-case Batch actions, Batch statements on "*". The
                  workers' and the scaler's calls are then allowed exactly as on AWS.

Output (stdout, exit 0): one JSON object,
    {"DetectionJobRole": {"detection-worker": {"Version": "2012-10-17", "Statement": [...]}},
     "GroupingJobRole":  {"grouping-worker": {...}},
     "ScalerJobRole":    {"scaler": {...}}}
i.e. role logical id -> policy name -> policy document, ready for `iam put-user-policy
--policy-name NAME --policy-document JSON`. It holds the role's inline Policies plus every
AWS::IAM::Policy resource attached to it (Roles: !Ref ROLE) whose Condition holds for the given
parameters (e.g. use-stack-key only with --param KmsKeyArn=...). Errors (unknown role, a !Ref
that cannot be resolved, a malformed argument) go to stderr with exit 2.

moto 5.2.5 with IAM enforcement (what a test can rely on; measured with boto3 against
.venv/bin/moto_server, see docs/security.md "Testing the policies"):
  - Enforcement starts after INITIAL_NO_AUTH_ACTION_COUNT requests (env of moto_server; every
    request counts, IAM calls included), or at once after `POST /moto-api/reset-auth` with body
    "0" (the body is the new count; the request counter restarts at 0). Create the users, their
    inline policies (iam put-user-policy) and access keys (iam create-access-key) before that;
    with enforcement on, every caller needs keys of an IAM user with an allowing policy (moto's
    default test/test keys are then rejected: InvalidClientTokenId / InvalidAccessKeyId).
  - SQS: the action is checked against the queue's ARN (Resource), so a user allowed on one
    queue is denied on another. The action name is the API operation's own, so
    DeleteMessageBatch needs sqs:DeleteMessageBatch and ChangeMessageVisibilityBatch
    sqs:ChangeMessageVisibilityBatch in moto, whereas AWS authorises them as sqs:DeleteMessage /
    sqs:ChangeMessageVisibility (the template lists only the latter, as AWS documents).
  - S3: object calls are checked against arn:aws:s3:::BUCKET/KEY, bucket calls against
    arn:aws:s3:::BUCKET; PutObject outside the allowed prefixes is denied (403 AccessDenied).
  - Conditions: only StringEquals is evaluated, and only on sts:ExternalId; any other operator
    (StringLike, ArnLike, Bool, ...) or key (s3:prefix) is ignored, i.e. treated as matching.
    So a ListBucket limited by s3:prefix is allowed for any prefix in moto.
  - GetObject of a missing key returns 404 NoSuchKey whenever GetObject itself is allowed, with
    or without s3:ListBucket: moto does not reproduce AWS's 403 for callers lacking ListBucket.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULT_ROLES = ("DetectionJobRole", "GroupingJobRole", "ScalerJobRole")
REPO = Path(__file__).resolve().parent.parent
NO_VALUE = object()  # what AWS::NoValue resolves to: the key or list item is dropped


class ResolveError(Exception):
    """A value the template needs that neither the arguments nor the defaults provide."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        template = load_template(Path(args.template))
        ctx = Context(template, args)
        out = {role: role_policies(ctx, role) for role in args.role}
        if args.moto:
            out = {role: {name: for_moto(doc) for name, doc in docs.items()}
                   for role, docs in out.items()}
    except (ResolveError, OSError, yaml.YAMLError) as e:
        print(f"iam_policies: {e}", file=sys.stderr)
        return 2
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def role_policies(ctx: "Context", role: str) -> dict[str, Any]:
    """The resolved documents of `role`: inline Policies, then attached AWS::IAM::Policy."""
    res = ctx.resources.get(role)
    if not res or res.get("Type") != "AWS::IAM::Role":
        raise ResolveError(f"{role} is not an AWS::IAM::Role of the template")
    if not ctx.condition_holds(res.get("Condition")):
        return {}
    docs: dict[str, Any] = {}
    for policy in ctx.resolve(res.get("Properties", {}).get("Policies", [])):
        docs[policy["PolicyName"]] = policy["PolicyDocument"]
    for logical_id, other in ctx.resources.items():
        if other.get("Type") != "AWS::IAM::Policy":
            continue
        props = other.get("Properties", {})
        if {"Ref": role} not in props.get("Roles", []):
            continue
        if ctx.condition_holds(other.get("Condition")):
            resolved = ctx.resolve(props)
            docs[resolved["PolicyName"]] = resolved["PolicyDocument"]
    return docs


# AWS authorises SQS's batch calls by their single actions; moto by the operation's own name.
MOTO_SQS_ALIASES = {
    "sqs:DeleteMessage": "sqs:DeleteMessageBatch",
    "sqs:ChangeMessageVisibility": "sqs:ChangeMessageVisibilityBatch",
    "sqs:SendMessage": "sqs:SendMessageBatch",
}


def for_moto(doc: dict[str, Any]) -> dict[str, Any]:
    """The same permissions in the form moto 5.2.5's enforcement recognises (see the module
    docstring): SQS batch calls under their own action names, Batch actions in moto's lower case
    (it matches action names case-sensitively), and Batch statements on Resource "*" (moto checks
    every Batch call against "*"). Nothing is added for S3 or for any other service."""
    out = json.loads(json.dumps(doc))
    for st in out.get("Statement", []):
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else list(actions)
        extra = [MOTO_SQS_ALIASES[a] for a in actions if a in MOTO_SQS_ALIASES]
        extra += [a.lower() for a in actions if a.startswith("batch:") and a != a.lower()]
        if extra:
            st["Action"] = actions + [a for a in extra if a not in actions]
        if actions and all(a.startswith("batch:") for a in actions):
            st["Resource"] = "*"
    return out


class Context:
    """Parameter values, resource attributes and the intrinsic functions over them."""

    def __init__(self, template: dict[str, Any], args: argparse.Namespace):
        self.resources: dict[str, Any] = template.get("Resources", {})
        self.conditions: dict[str, Any] = template.get("Conditions", {})
        suffix = "amazonaws.com.cn" if args.partition == "aws-cn" else "amazonaws.com"
        self.pseudo = {
            "AWS::AccountId": args.account_id,
            "AWS::Region": args.region,
            "AWS::Partition": args.partition,
            "AWS::URLSuffix": suffix,
            "AWS::StackName": "facegroup",
            "AWS::StackId": f"arn:{args.partition}:cloudformation:{args.region}:"
            f"{args.account_id}:stack/facegroup/00000000-0000-0000-0000-000000000000",
        }
        self.params: dict[str, Any] = {}
        given = dict(pair(p, "--param") for p in args.param)
        for name, spec in template.get("Parameters", {}).items():
            if name in given:
                value: Any = given.pop(name)
            elif "Default" in spec:
                value = spec["Default"]
            else:
                value = None  # required: an error only if a printed policy uses it
            if value is not None and str(spec.get("Type", "")).startswith("List<"):
                value = [v for v in str(value).split(",") if v]
            self.params[name] = value
        if given:
            raise ResolveError(f"unknown parameter(s): {', '.join(sorted(given))}")
        self.refs: dict[str, Any] = {}
        self.attrs: dict[str, Any] = {}
        for q in args.queue:
            logical_id, url = pair(q, "--queue")
            name = url.rstrip("/").rsplit("/", 1)[-1]
            self.refs[logical_id] = url
            self.attrs[f"{logical_id}.Arn"] = self.sqs_arn(name)
            self.attrs[f"{logical_id}.QueueName"] = name
        self.refs.update(pair(r, "--ref") for r in args.ref)
        self.attrs.update(pair(a, "--attr") for a in args.attr)
        self._condition_cache: dict[str, bool] = {}

    def sqs_arn(self, name: str) -> str:
        p = self.pseudo
        return f"arn:{p['AWS::Partition']}:sqs:{p['AWS::Region']}:{p['AWS::AccountId']}:{name}"

    # ---------------------------------------------------------------- conditions
    def condition_holds(self, name: str | None) -> bool:
        if name is None:
            return True
        if name not in self._condition_cache:
            if name not in self.conditions:
                raise ResolveError(f"unknown condition {name}")
            self._condition_cache[name] = bool(self.evaluate(self.conditions[name]))
        return self._condition_cache[name]

    def evaluate(self, node: Any) -> Any:
        """A condition expression: Fn::Equals/Not/And/Or and Condition references."""
        if isinstance(node, dict) and len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Fn::Equals":
                a, b = (self.resolve(x) for x in arg)
                return str(a) == str(b)
            if fn == "Fn::Not":
                return not self.evaluate(arg[0])
            if fn == "Fn::And":
                return all(self.evaluate(x) for x in arg)
            if fn == "Fn::Or":
                return any(self.evaluate(x) for x in arg)
            if fn == "Condition":
                return self.condition_holds(arg)
        return self.resolve(node)

    # ---------------------------------------------------------------- values
    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.resolve(x) for x in node]
            return [x for x in items if x is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref":
                return self.ref(arg)
            if fn == "Fn::GetAtt":
                logical_id, attr = arg.split(".", 1) if isinstance(arg, str) else arg
                return self.get_att(logical_id, attr)
            if fn == "Fn::Sub":
                return self.sub(arg)
            if fn == "Fn::Join":
                sep, parts = arg
                return sep.join(str(p) for p in self.resolve(parts))
            if fn == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition_holds(cond) else no)
            if fn == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if fn == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
            if fn.startswith("Fn::") or fn == "Condition":
                raise ResolveError(f"intrinsic function {fn} is not supported")
        out = {}
        for k, v in node.items():
            r = self.resolve(v)
            if r is not NO_VALUE:
                out[k] = r
        return out

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            if self.params[name] is None:
                raise ResolveError(f"parameter {name} has no default: pass --param {name}=...")
            return self.params[name]
        if name in self.refs:
            return self.refs[name]
        res = self.resources.get(name)
        if res is None:
            raise ResolveError(f"!Ref {name}: no such parameter or resource")
        props = self.name_properties(res)
        kind = res.get("Type")
        p = self.pseudo
        if kind == "AWS::SQS::Queue" and "QueueName" in props:
            return (f"https://sqs.{p['AWS::Region']}.{p['AWS::URLSuffix']}/"
                    f"{p['AWS::AccountId']}/{props['QueueName']}")
        if kind == "AWS::Batch::JobQueue" and "JobQueueName" in props:
            return (f"arn:{p['AWS::Partition']}:batch:{p['AWS::Region']}:{p['AWS::AccountId']}:"
                    f"job-queue/{props['JobQueueName']}")
        if kind == "AWS::IAM::Role":
            return props.get("RoleName", name)
        if kind == "AWS::KMS::Key":
            return "00000000-0000-0000-0000-000000000000"
        raise ResolveError(f"!Ref {name} ({kind}): pass --ref {name}=VALUE")

    def get_att(self, logical_id: str, attr: str) -> Any:
        key = f"{logical_id}.{attr}"
        if key in self.attrs:
            return self.attrs[key]
        res = self.resources.get(logical_id)
        if res is None:
            raise ResolveError(f"!GetAtt {key}: no such resource")
        kind = res.get("Type")
        props = self.name_properties(res)
        p = self.pseudo
        if kind == "AWS::SQS::Queue" and "QueueName" in props:
            if attr == "Arn":
                return self.sqs_arn(props["QueueName"])
            if attr == "QueueName":
                return props["QueueName"]
        if kind == "AWS::IAM::Role" and attr == "Arn":
            return (f"arn:{p['AWS::Partition']}:iam::{p['AWS::AccountId']}:role/"
                    f"{props.get('RoleName', logical_id)}")
        if kind == "AWS::KMS::Key" and attr == "Arn":
            return (f"arn:{p['AWS::Partition']}:kms:{p['AWS::Region']}:{p['AWS::AccountId']}:"
                    f"key/{self.ref(logical_id)}")
        raise ResolveError(f"!GetAtt {key} ({kind}): pass --attr {key}=VALUE")

    def name_properties(self, res: dict[str, Any]) -> dict[str, Any]:
        """Only the naming properties a default Ref/GetAtt needs: resolving all of a resource's
        properties would demand parameters (subnets, image tags) no policy uses."""
        props = res.get("Properties", {})
        return {k: self.resolve(props[k])
                for k in ("QueueName", "JobQueueName", "RoleName") if k in props}

    def sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, local = arg[0], {k: self.resolve(v) for k, v in arg[1].items()}
        else:
            text, local = arg, {}

        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name.startswith("!"):  # ${!Literal} stays ${Literal}
                return "${" + name[1:] + "}"
            if name in local:
                return str(local[name])
            if "." in name:
                logical_id, attr = name.split(".", 1)
                return str(self.get_att(logical_id, attr))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", one, text)


def load_template(path: Path) -> dict[str, Any]:
    """YAML with CloudFormation's short tags turned into their long forms (!Ref -> Ref, !Sub ->
    Fn::Sub, !GetAtt A.B -> Fn::GetAtt [A, B], ...)."""

    class Loader(yaml.SafeLoader):
        pass

    def tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        if suffix in ("Ref", "Condition"):
            return {suffix: value}
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
        return {f"Fn::{suffix}": value}

    Loader.add_multi_constructor("!", tag)
    if not path.is_absolute() and not path.exists():
        path = REPO / path
    with open(path) as f:
        return yaml.load(f, Loader=Loader)


def pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ResolveError(f"{flag} {text!r}: expected KEY=VALUE")
    return key, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Print the resolved IAM policies of the stack's job roles as JSON.")
    ap.add_argument("--template", default="batch/facegroup-batch.yaml")
    ap.add_argument("--account-id", default="123456789012")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--partition", default="aws")
    ap.add_argument("--role", action="append", default=None)
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--queue", action="append", default=[])
    ap.add_argument("--ref", action="append", default=[])
    ap.add_argument("--attr", action="append", default=[])
    ap.add_argument("--moto", action="store_true",
                    help="rewrite for moto 5.2.5's IAM enforcement (see for_moto)")
    args = ap.parse_args(argv)
    args.role = args.role or list(DEFAULT_ROLES)
    return args


if __name__ == "__main__":
    sys.exit(main())
