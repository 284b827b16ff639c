#!/bin/sh
# Installs llmgw-policy for the policy workflow without compiling on every pull request.
#
#   install-llmgw-policy.sh ROOT [SOURCE]
#
# With LLMGW_POLICY_URL set: downloads that release binary, refuses it unless its SHA-256 is
# LLMGW_POLICY_SHA256, and installs it as ROOT/bin/llmgw-policy.
# Otherwise: builds SOURCE (a checkout of llmgw) with `cargo install --locked` into ROOT, unless
# ROOT already holds the build of SOURCE's commit (restored by the workflow's cache), and
# records that commit in ROOT/commit.
# Under GitHub Actions (GITHUB_PATH set) ROOT/bin goes on the PATH of the later steps.
set -eu

root=${1:?usage: install-llmgw-policy.sh ROOT [SOURCE]}
source=${2:-}
bin="$root/bin/llmgw-policy"
mkdir -p "$root/bin"

if [ -n "${LLMGW_POLICY_URL:-}" ]; then
    if [ -z "${LLMGW_POLICY_SHA256:-}" ]; then
        echo "error: LLMGW_POLICY_URL is set but LLMGW_POLICY_SHA256 is not: a download is never run unchecked" >&2
        exit 2
    fi
    download=$(mktemp "$root/bin/.download.XXXXXX")
    trap 'rm -f "$download"' EXIT
    curl --fail --silent --show-error --location --output "$download" "$LLMGW_POLICY_URL"
    actual=$(sha256sum "$download" | cut -d ' ' -f 1)
    if [ "$actual" != "$LLMGW_POLICY_SHA256" ]; then
        echo "error: $LLMGW_POLICY_URL has SHA-256 $actual, not the expected $LLMGW_POLICY_SHA256; not installed" >&2
        exit 1
    fi
    chmod 0755 "$download"
    mv "$download" "$bin"
    echo "llmgw-policy downloaded from $LLMGW_POLICY_URL, checksum verified"
else
    if [ -z "$source" ]; then
        echo "error: give the llmgw checkout to build from, or set LLMGW_POLICY_URL" >&2
        exit 2
    fi
    commit=$(git -C "$source" rev-parse HEAD)
    if [ -x "$bin" ] && [ "$(cat "$root/commit" 2>/dev/null)" = "$commit" ]; then
        echo "llmgw-policy of llmgw $commit restored from the cache"
    else
        cargo install --locked --force --path "$source/policy-cli" --root "$root" --target-dir "$source/target"
        echo "$commit" >"$root/commit"
        echo "llmgw-policy of llmgw $commit built"
    fi
fi

"$bin" --version
if [ -n "${GITHUB_PATH:-}" ]; then
    echo "$root/bin" >>"$GITHUB_PATH"
fi
