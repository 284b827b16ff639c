#!/bin/sh
# The checks of a policy pull request, as ci/llmgw-policy.yml runs them, in the policy
# repository's working tree with the pull request checked out:
#
#   policy-check.sh BASE [TRAFFIC]
#
# 1. lint: every finding as a GitHub annotation on its line (errors fail the check);
# 2. test: the policy tests, a line a case in the log and JUnit XML in llmgw-policy-junit.xml;
# 3. diff: recorded traffic (TRAFFIC, default traffic/sample.jsonl) replayed through BASE and
#    HEAD, written to llmgw-policy-diff.md for the pull-request comment; when HEAD does not lint
#    clean the comment holds the diagnostics instead.
#
# Every step runs even when an earlier one fails, so one push shows every problem. Exits 1
# when any step fails.
set -u

base=${1:?usage: policy-check.sh BASE [TRAFFIC]}
traffic=${2:-traffic/sample.jsonl}
status=0

echo "== llmgw-policy lint"
llmgw-policy lint . --format github || status=1

echo "== llmgw-policy test"
llmgw-policy test . --format junit >llmgw-policy-junit.xml
llmgw-policy test . || status=1

echo "== llmgw-policy diff $base HEAD"
if [ -f "$traffic" ]; then
    llmgw-policy diff "$base" HEAD --repo . --traffic "$traffic" --format markdown >llmgw-policy-diff.md || status=1
else
    printf '### llmgw policy diff\n\nNo recorded traffic at `%s`: add a sample (`llmgw-policy traffic anonymise`) to see what this change does to real requests.\n' "$traffic" >llmgw-policy-diff.md
fi
cat llmgw-policy-diff.md

exit $status
