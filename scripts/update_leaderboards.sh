#!/usr/bin/env bash
# Regenerate the committed board of each built-in suite (default: relations tiny photos; or name them):
# leaderboards/SUITE/ (results.jsonl, run.json with provenance), leaderboards/SUITE.json (the board that
# `cafe-bench compare` reads) and leaderboards/SUITE.md; for relations also leaderboards/relations/validity.json
# and the report page leaderboards/relations/report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
suites=("$@")
[ ${#suites[@]} -eq 0 ] && suites=(relations tiny photos)
for suite in "${suites[@]}"; do
  rm -rf "leaderboards/$suite"
  cafe-bench run --suite "$suite" --out "leaderboards/$suite" --no-progress > /dev/null
  if [ "$suite" = relations ]; then
    cafe-bench validity "leaderboards/$suite" --no-progress > /dev/null
  fi
  cafe-bench leaderboard "leaderboards/$suite" --save "leaderboards/$suite" > /dev/null
  if [ "$suite" = relations ]; then
    cafe-bench report "leaderboards/$suite" --out "leaderboards/$suite/report.html" > /dev/null
  fi
done
