#!/usr/bin/env bash
# Regenerate the committed board of each built-in suite (default: relations tiny photos; or name them):
# leaderboards/SUITE/ (results.jsonl, run.json with provenance), leaderboards/SUITE.json (the board that
# `cafe-bench compare` reads) and leaderboards/SUITE.md; for relations also leaderboards/relations/validity.json
# and the report page leaderboards/relations/report.html.
# Boards record the git commit of the code that made them: the code (cafe_bench/, pyproject.toml) must be committed
# first, or the commit would be marked -dirty and name code that no one can check out.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "$(git status --porcelain -- cafe_bench pyproject.toml)" ]; then
  echo "update_leaderboards.sh: uncommitted changes in cafe_bench/ or pyproject.toml; commit them first, so that" \
    "the boards record a commit that holds the code that made them (git status lists them)" >&2
  exit 2
fi
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
