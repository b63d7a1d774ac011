#!/usr/bin/env bash
# Regenerate the committed board of each built-in suite: leaderboards/SUITE/ (results.jsonl, run.json with
# provenance), leaderboards/SUITE.json (the board that `cafe-bench compare` reads) and leaderboards/SUITE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
for suite in tiny photos; do
  rm -rf "leaderboards/$suite"
  cafe-bench run --suite "$suite" --out "leaderboards/$suite" --no-progress > /dev/null
  cafe-bench leaderboard "leaderboards/$suite" --save "leaderboards/$suite" > /dev/null
done
